import StraitBPF
import StraitSystem

/// What can go wrong starting or running the proxy; each case says which step failed.
public enum ProxyError: Error, CustomStringConvertible {
    /// A socket, pipe or epoll call failed.
    case system(SystemCallError)
    /// Loading the kernel programs or updating the socket maps failed.
    case sockmap(BPFError)
    /// The configuration is invalid.
    case config(ProxyConfigError)
    /// A listener's address could not be bound.
    case bind(listener: String, address: String, SystemCallError)

    public var description: String {
        switch self {
        case .system(let error): error.bindAdvice.map { "\(error). \($0)" } ?? "\(error)"
        case .sockmap(let error): "kernel datapath (sockmap or skmsg): \(error)"
        case .config(let error): "\(error)"
        case .bind(let listener, let address, let error): "listener \(listener) cannot bind \(address): \(error). \(error.bindAdvice ?? "")"
        }
    }
}
