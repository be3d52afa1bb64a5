import StraitBPF
import Glibc
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
        case .system(let error): "\(error)"
        case .sockmap(let error): "kernel datapath (sockmap or skmsg): \(error)"
        case .config(let error): "\(error)"
        case .bind(let listener, let address, let error): "listener \(listener) cannot bind \(address): \(error). \(Self.bindAdvice(error))"
        }
    }

    /// What to do when `bind(2)` fails, by errno: each has its own cause.
    static func bindAdvice(_ error: SystemCallError) -> String {
        switch error.errno.rawValue {
        case EADDRINUSE: "Another socket is bound to that address and port (`ss -ltnp` names its process): stop it, or choose another port."
        case EADDRNOTAVAIL: "That address is on no interface of this host (or network namespace): listen on a local address, or on 0.0.0.0 / [::]."
        case EACCES: "Ports below 1024 need root or CAP_NET_BIND_SERVICE."
        default: "Check the address, and that this process may bind it."
        }
    }
}
