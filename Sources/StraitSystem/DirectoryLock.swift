#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock(2)` on a directory, so that commands changing the same state (e.g. maps
/// pinned below it) take turns. Advisory: only code that takes the lock waits for it. Released on
/// ``unlock()`` or when the process exits, so a crash never leaves it held.
public final class DirectoryLock {
    private var fd: CInt

    /// Blocks until the lock on `path` is held.
    public init(path: String) throws(SystemCallError) {
        fd = try systemCall("open \(path)") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        do {
            try systemCall("flock \(path)") { flock(fd, LOCK_EX) }
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    deinit { unlock() }

    /// Releases the lock (closing the descriptor releases it).
    public func unlock() {
        if fd >= 0 { closeDescriptor(fd) }
        fd = -1
    }
}

extension DirectoryLock {
    /// Runs `body` holding the lock on `path`, released on return or throw: how rule changes from
    /// two commands on one pin folder take turns.
    public static func holding<T>(_ path: String, _ body: () throws -> T) throws -> T {
        let lock = try DirectoryLock(path: path)
        defer { lock.unlock() }
        return try body()
    }
}
