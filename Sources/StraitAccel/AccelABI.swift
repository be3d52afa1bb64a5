import StraitKernelABI
import StraitSystem

// Swift faces of the structs in StraitKernelABI/include/strait/accel.h.

extension strait_sock_key {
    /// The socket's local address (IPv4 shown as such, not as its mapped form).
    public var localAddress: IPAddress { IPAddress(ipv6Mapped: withUnsafeBytes(of: local_ip) { Array($0) }) }
    /// The peer's address (IPv4 shown as such, not as its mapped form).
    public var remoteAddress: IPAddress { IPAddress(ipv6Mapped: withUnsafeBytes(of: remote_ip) { Array($0) }) }

    /// `local:port -> remote:port`, IPv6 in brackets.
    public var tupleDescription: String {
        func endpoint(_ address: IPAddress, _ port: UInt16) -> String {
            address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
        }
        return "\(endpoint(localAddress, local_port)) -> \(endpoint(remoteAddress, remote_port))"
    }
}
