import StraitBPF
import StraitSystem

/// Why an lb operation was refused. Each description says what to do.
public enum LBError: Error, CustomStringConvertible {
    /// The cgroup directory the configuration names does not exist.
    case noSuchCgroup(String)
    /// More services than the maps were sized for at start.
    case tooManyServices(count: Int, capacity: Int)
    /// No `strait lb` process publishes its state where status looks.
    case notRunning(String)
    /// Another `strait lb` holds the state directory.
    case alreadyRunning(String)

    /// What went wrong and what to do, for the operator; the CLI prints it as is.
    public var description: String {
        switch self {
        case .noSuchCgroup(let path):
            "no cgroup v2 directory at \(path): create it (mkdir) and move the clients to balance into it, then start again."
        case .tooManyServices(let count, let capacity):
            "\(count) services, but the maps were sized for \(capacity) when strait lb started: restart it to grow them."
        case .notRunning(let path):
            "strait lb is not running (no state at \(path)): start it with `strait lb --config FILE`."
        case .alreadyRunning(let path):
            "another strait lb is running (it holds \(path)); stop it first, or give this one its own --state-directory."
        }
    }
}
