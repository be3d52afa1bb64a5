import StraitBPF
import StraitSystem

/// What can go wrong starting or running the proxy; each case says which step failed.
public enum ProxyError: Error, CustomStringConvertible {
    /// A socket, pipe or event-loop call failed.
    case system(SystemCallError)
    /// Loading the kernel programs or updating the socket maps failed.
    case sockmap(BPFError)
    /// The configuration file could not be read or parsed (with its line and column).
    case config(ProxyConfigError)
    /// The configuration does not check (``ProxyConfig/validate(dualStack:)``).
    case invalid(ProxyConfigProblem)
    /// `endpoints_cgroup` names no existing cgroup v2 directory; `mount` is where cgroup v2 is
    /// mounted, if it is.
    case endpointsCgroupMissing(path: String, mount: String?)
    /// A listener's address could not be bound.
    case bind(listener: String, address: String, SystemCallError)
    /// The endpoint datapath keys sockets by IP address and port: a socket of another family
    /// (`address`, a Unix socket, say) cannot be forwarded through it.
    case endpointNotIP(address: String)

    /// One line for the operator: which step failed, the errno where there is one, and for a failed
    /// `bind(2)` what to do about it (``SystemCallError/bindAdvice``).
    public var description: String {
        switch self {
        case .system(let error): error.bindAdvice.map { "\(error). \($0)" } ?? "\(error)"
        case .sockmap(let error): "kernel datapath (sockmap or skmsg): \(error)"
        case .config(let error): "\(error)"
        case .invalid(let problem): "invalid configuration: \(problem)"
        case .endpointsCgroupMissing(let path, let mount):
            "`endpoints_cgroup` \(path) does not exist: it must be an existing cgroup v2 directory (create it under \(mount ?? "the cgroup v2 mount") and run the local clients and servers in it)"
        case .bind(let listener, let address, let error): "listener \(listener) cannot bind \(address): \(error). \(error.bindAdvice ?? "")"
        case .endpointNotIP(let address):
            "the endpoint forwarder keys sockets by IP address and port, and \(address) is not one: use the copy or splice datapath for it"
        }
    }
}
