import Foundation
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The BPF filesystem, where maps, programs and links are pinned to outlive processes.
public enum BPFFS {
    /// The conventional mount point.
    public static let defaultMount = "/sys/fs/bpf"
    static let magic: Int = 0xCAFE_4A11  // BPF_FS_MAGIC

    /// Whether bpffs is mounted at `path`.
    public static func isMounted(at path: String = defaultMount) -> Bool {
        (try? fileSystemType(at: path)) == magic
    }

    /// Mounts bpffs at `path` unless it is mounted already (a fresh machine often has none).
    public static func ensureMounted(at path: String = defaultMount) throws(BPFError) {
        if isMounted(at: path) { return }
        do {
            try systemCall("mkdir \(path)") { mkdir(path, 0o700) == 0 || Glibc.errno == EEXIST ? 0 : -1 }
            try mountFileSystem(source: "bpf", target: path, type: "bpf", options: "mode=0700")
        } catch {
            throw BPFError(error)
        }
    }

    /// Makes `path` and its parents inside bpffs.
    public static func makeDirectory(_ path: String) throws(BPFError) {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && Glibc.errno != EEXIST {
                throw .call("mkdir \(prefix)", .init(rawValue: Glibc.errno))
            }
        }
    }

    /// Removes a pin (the object lives on while anything else refers to it). Missing is fine.
    public static func unpin(_ path: String) throws(BPFError) {
        if unlink(path) != 0 && Glibc.errno != ENOENT {
            throw .call("unlink \(path)", .init(rawValue: Glibc.errno))
        }
    }

    /// Removes a pin folder and everything pinned below it.
    public static func removeTree(_ path: String) throws(BPFError) {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        for entry in entries {
            let child = path + "/" + entry
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: child, isDirectory: &isDirectory), isDirectory.boolValue {
                try removeTree(child)
            } else {
                try unpin(child)
            }
        }
        if rmdir(path) != 0 && Glibc.errno != ENOENT {
            throw .call("rmdir \(path)", .init(rawValue: Glibc.errno))
        }
    }

    /// Whether something is pinned at `path`.
    public static func exists(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: path)
    }
}
