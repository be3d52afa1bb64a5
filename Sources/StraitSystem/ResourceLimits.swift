#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Process resource limits that a server owning its process should set at start.
public enum ResourceLimits {
    /// A soft and a hard limit, as `getrlimit(2)` reports them.
    public struct Limit: Sendable, Equatable {
        /// The limit the kernel enforces now.
        public var soft: UInt64
        /// The ceiling an unprivileged process may raise the soft limit to.
        public var hard: UInt64

        /// A soft and a hard limit.
        public init(soft: UInt64, hard: UInt64) {
            self.soft = soft
            self.hard = hard
        }
    }

    /// `RLIMIT_NOFILE` now.
    public static func openFiles() throws(SystemCallError) -> Limit {
        var value = rlimit()
        try systemCall("getrlimit(RLIMIT_NOFILE)") { getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &value) }
        return Limit(soft: UInt64(value.rlim_cur), hard: UInt64(value.rlim_max))
    }

    /// Sets `RLIMIT_NOFILE` (tests lower it; a limit above the hard one needs `CAP_SYS_RESOURCE`).
    public static func setOpenFiles(_ limit: Limit) throws(SystemCallError) {
        var value = rlimit(rlim_cur: rlim_t(limit.soft), rlim_max: rlim_t(limit.hard))
        try systemCall("setrlimit(RLIMIT_NOFILE)") { setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &value) }
    }

    /// Raises the soft `RLIMIT_NOFILE` to the hard one, as HAProxy and nginx do: the soft default
    /// (often 1024) is a compatibility setting for `select(2)`, which nothing in Strait uses, and a
    /// proxy needs two descriptors per connection. Returns the limits before and after. Call once at
    /// start, from the command that owns the process; a library never changes it behind its owner.
    @discardableResult
    public static func raiseOpenFilesToHard() throws(SystemCallError) -> (before: Limit, after: Limit) {
        let before = try openFiles()
        guard before.soft < before.hard else { return (before, before) }
        let after = Limit(soft: before.hard, hard: before.hard)
        try setOpenFiles(after)
        return (before, after)
    }
}
