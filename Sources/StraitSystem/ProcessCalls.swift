import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Signals to other processes and the questions about them that features, benchmarks and tests ask
/// (is the process in a pid file still alive?), each wrapped once. A pid names a process only while
/// it lives: the kernel may reuse it, so callers check ownership another way (a lock, a socket)
/// before acting on a pid read from a file.
public enum ProcessCall {
    /// `kill(pid, signal)`. `ESRCH` when no such process exists.
    public static func signal(_ pid: pid_t, _ signal: CInt) throws(SystemCallError) {
        try systemCall("kill(\(pid), \(signal))") { Glibc.kill(pid, signal) }
    }

    /// Replaces this process's image with the executable at `path` (`execv(2)`); `arguments` starts
    /// with the program's name. Returns only by throwing, when the exec failed. The new image inherits
    /// every descriptor not marked close-on-exec.
    public static func execute(_ path: String, arguments: [String]) throws(SystemCallError) -> Never {
        let argv = arguments.map { strdup($0) } + [nil]
        try systemCall("execv \(path)") { execv(path, argv) }
        fatalError("execv returned without failing")
    }

    /// Whether a process with this pid exists (`kill(pid, 0)`), whoever owns it: `EPERM` (another
    /// user's process) counts as alive, only `ESRCH` as gone.
    public static func isAlive(_ pid: pid_t) -> Bool {
        do {
            try signal(pid, 0)
            return true
        } catch {
            return error.errno != .noSuchProcess
        }
    }
}
