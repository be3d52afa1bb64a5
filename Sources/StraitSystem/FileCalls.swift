import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Filesystem calls on paths (as opposed to descriptors), each wrapped once.
public enum FileCall {
    /// `rmdir(2)`: removes `path` if it is an empty directory. `ENOTEMPTY` when something is left in
    /// it, which callers that tidy up shared parents (a pin root) expect and ignore.
    public static func removeDirectory(_ path: String) throws(SystemCallError) {
        try systemCall("rmdir \(path)") { Glibc.rmdir(path) }
    }
}
