import Foundation

/// Two network namespaces joined by a veth pair, addressed from 198.18.0.0/15 and 2001:db8::/32:
/// for tests and benchmarks whose traffic must cross a real interface (a qdisc, a tc program)
/// rather than loopback. The sender's end is `senderInterface` in `sender`. ``delete()`` removes
/// both namespaces, and the veth with them.
public struct VethPair: Sendable {
    /// The namespace whose interface the traffic leaves by (where egress programs and qdiscs go).
    public let sender: NetworkNamespace
    /// The namespace the traffic arrives in.
    public let receiver: NetworkNamespace
    /// The veth end in `sender`.
    public let senderInterface: String
    /// The veth end in `receiver`.
    public let receiverInterface: String
    /// `198.18.SUBNET.1` and `.2`; `2001:db8:SUBNET::1` and `::2`.
    public let senderIPv4: String
    /// The receiver end's IPv4 address.
    public let receiverIPv4: String
    /// The sender end's IPv6 address.
    public let senderIPv6: String
    /// The receiver end's IPv6 address.
    public let receiverIPv6: String

    /// Creates namespaces `NAME-s` and `NAME-r` and the veth `IFACE` (sender side) / `IFACE`+`r`,
    /// both up, with IPv6 duplicate-address detection off so the addresses work at once. `interface`
    /// must be at most 14 characters. Whatever was made is removed again when a step fails.
    public static func create(name: String, interface: String, subnet: UInt8) throws -> VethPair {
        let pair = VethPair(
            sender: NetworkNamespace(name: name + "-s"), receiver: NetworkNamespace(name: name + "-r"),
            senderInterface: interface, receiverInterface: interface + "r",
            senderIPv4: "198.18.\(subnet).1", receiverIPv4: "198.18.\(subnet).2",
            senderIPv6: "2001:db8:\(subnet)::1", receiverIPv6: "2001:db8:\(subnet)::2")
        do {
            _ = try NetworkNamespace.create(pair.sender.name)
            _ = try NetworkNamespace.create(pair.receiver.name)
            try NetworkNamespace.runIP(["-n", pair.sender.name, "link", "add", pair.senderInterface, "type", "veth", "peer", "name", pair.receiverInterface, "netns", pair.receiver.name])
            for (namespace, device, v4, v6) in [
                (pair.sender, pair.senderInterface, pair.senderIPv4, pair.senderIPv6),
                (pair.receiver, pair.receiverInterface, pair.receiverIPv4, pair.receiverIPv6),
            ] {
                try NetworkNamespace.runIP(["-n", namespace.name, "addr", "add", v4 + "/24", "dev", device])
                try NetworkNamespace.runIP(["-n", namespace.name, "addr", "add", v6 + "/64", "dev", device, "nodad"])
                try NetworkNamespace.runIP(["-n", namespace.name, "link", "set", device, "up"])
            }
        } catch {
            pair.delete()
            throw error
        }
        return pair
    }

    /// Deletes both namespaces (the veth goes with them). Missing is fine.
    public func delete() {
        sender.delete()
        receiver.delete()
    }
}
