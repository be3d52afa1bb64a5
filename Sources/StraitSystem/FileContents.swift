#if canImport(Glibc)
import Glibc
#endif

/// Whole-file reads for configuration and rule files, with the errno of what failed (Foundation's
/// readers say only "cannot read").
public enum FileContents {
    /// The first `limit` + 1 bytes of the file at `path` (`-`: standard input), so a caller can
    /// refuse a file over `limit` without reading all of it. One `open`, then `read` until the end
    /// or the limit; the descriptor is closed before returning.
    public static func read(path: String, limit: Int) throws(SystemCallError) -> [UInt8] {
        let fd = path == "-" ? STDIN_FILENO : try systemCall("open(\(path))") { open(path, O_RDONLY | O_CLOEXEC) }
        defer { if fd != STDIN_FILENO { close(fd) } }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count <= limit {
            let wanted = min(chunk.count, limit + 1 - bytes.count)
            let count = try systemCall("read(\(path))") { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, wanted) } }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return bytes
    }
}
