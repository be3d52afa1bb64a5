import StraitKernelABI
import StraitSystem

// Swift faces of the structs in StraitKernelABI/include/strait/accel.h.

extension strait_sock_key {
    /// The socket's local address (IPv4 shown as such, not as its mapped form).
    public var localAddress: IPAddress { IPAddress(ipv6Mapped: withUnsafeBytes(of: local_ip) { Array($0) }) }
    public var remoteAddress: IPAddress { IPAddress(ipv6Mapped: withUnsafeBytes(of: remote_ip) { Array($0) }) }

    /// `local:port -> remote:port`, IPv6 in brackets.
    public var tupleDescription: String {
        func endpoint(_ address: IPAddress, _ port: UInt16) -> String {
            address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
        }
        return "\(endpoint(localAddress, local_port)) -> \(endpoint(remoteAddress, remote_port))"
    }
}

extension strait_accel_counters {
    /// Adds per-CPU slots together.
    static func sum(_ slots: [strait_accel_counters]) -> strait_accel_counters {
        var total = strait_accel_counters()
        for slot in slots {
            total.sockets_tracked += slot.sockets_tracked
            total.sockets_skipped_policy += slot.sockets_skipped_policy
            total.sockets_released += slot.sockets_released
            total.redirected_messages += slot.redirected_messages
            total.redirected_bytes += slot.redirected_bytes
            total.fallback_no_peer_messages += slot.fallback_no_peer_messages
            total.fallback_no_peer_bytes += slot.fallback_no_peer_bytes
            total.fallback_stack_messages += slot.fallback_stack_messages
            total.fallback_stack_bytes += slot.fallback_stack_bytes
            total.fallback_disabled_messages += slot.fallback_disabled_messages
            total.fallback_disabled_bytes += slot.fallback_disabled_bytes
            total.events_dropped += slot.events_dropped
        }
        return total
    }
}
