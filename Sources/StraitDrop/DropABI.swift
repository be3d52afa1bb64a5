import StraitKernelABI
import StraitSystem

// Swift faces of the structs in StraitKernelABI/include/strait/drop.h.

extension strait_drop_config {
    var flagsOfActiveSet: UInt32 { active_set & 1 == 0 ? set_flags.0 : set_flags.1 }

    mutating func setFlags(_ flags: UInt32, ofSet set: UInt32) {
        if set & 1 == 0 { set_flags.0 = flags } else { set_flags.1 = flags }
    }
}

extension DropMode {
    var flags: UInt32 { self == .allow ? UInt32(STRAIT_DROP_ALLOW_LIST.rawValue) : 0 }
    init(flags: UInt32) { self = flags & UInt32(STRAIT_DROP_ALLOW_LIST.rawValue) != 0 ? .allow : .block }
}

/// The map key a rule is stored under; one case per rule map kind.
enum DropRuleKey {
    case host4(strait_drop_ipv4_host)
    case host6(strait_drop_ipv6_host)
    case source4(strait_drop_ipv4_key)
    case source6(strait_drop_ipv6_key)
    case port(strait_drop_port_key)
    case mac(strait_drop_mac_key)
    case arp(strait_drop_ipv4_key)

    init(_ rule: DropRule) {
        switch rule {
        case .source(let prefix) where prefix.address.isIPv4 && prefix.length == 32:
            var key = strait_drop_ipv4_host()
            withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: prefix.address.bytes) }
            self = .host4(key)
        case .source(let prefix) where !prefix.address.isIPv4 && prefix.length == 128:
            var key = strait_drop_ipv6_host()
            withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: prefix.address.bytes) }
            self = .host6(key)
        case .source(let prefix) where prefix.address.isIPv4: self = .source4(Self.ipv4(prefix))
        case .source(let prefix): self = .source6(Self.ipv6(prefix))
        case .arpSender(let prefix): self = .arp(Self.ipv4(prefix))
        case .destinationPort(let transport, let port):
            self = .port(strait_drop_port_key(port: port, protocol: transport.protocolNumber, reserved: 0))
        case .ethernetSource(let bytes):
            var key = strait_drop_mac_key()
            withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: bytes) }
            self = .mac(key)
        }
    }

    static func ipv4(_ prefix: IPPrefix) -> strait_drop_ipv4_key {
        var key = strait_drop_ipv4_key()
        key.prefixlen = UInt32(prefix.length)
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: prefix.address.bytes) }
        return key
    }

    static func ipv6(_ prefix: IPPrefix) -> strait_drop_ipv6_key {
        var key = strait_drop_ipv6_key()
        key.prefixlen = UInt32(prefix.length)
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: prefix.address.bytes) }
        return key
    }

    static func rule(_ key: strait_drop_ipv4_key) -> IPPrefix {
        let address = IPAddress.v4(withUnsafeBytes(of: key.addr) { $0.loadUnaligned(as: UInt32.self) })
        return IPPrefix(address: address, length: Int(key.prefixlen))
    }

    static func rule(_ key: strait_drop_ipv6_key) -> IPPrefix {
        IPPrefix(address: .v6(withUnsafeBytes(of: key.addr) { Array($0) }), length: Int(key.prefixlen))
    }

    static func rule(_ key: strait_drop_ipv4_host) -> IPPrefix {
        IPPrefix(address: .v4(withUnsafeBytes(of: key.addr) { $0.loadUnaligned(as: UInt32.self) }), length: 32)
    }

    static func rule(_ key: strait_drop_ipv6_host) -> IPPrefix {
        IPPrefix(address: .v6(withUnsafeBytes(of: key.addr) { Array($0) }), length: 128)
    }

    static func rule(_ key: strait_drop_port_key) -> DropRule {
        .destinationPort(key.protocol == 6 ? .tcp : .udp, key.port)
    }

    static func rule(_ key: strait_drop_mac_key) -> DropRule {
        .ethernetSource(withUnsafeBytes(of: key.addr) { Array($0) })
    }
}

/// Why frames were passed or dropped: the index of each per-CPU verdict counter, and its name in
/// `strait drop stats` and its JSON.
public enum DropVerdict: UInt32, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case passedNoMatch = 0
    case passedAllowed = 1
    case passedNotIP = 2
    case passedNeighborDiscovery = 3
    case droppedBlocked = 4
    case droppedNotAllowed = 5
    case droppedMalformed = 6

    /// True for the verdicts whose frames the program dropped (`XDP_DROP`), false for those it
    /// passed.
    public var isDrop: Bool { rawValue >= Self.droppedBlocked.rawValue }

    /// The counter's name in `strait drop stats`, its JSON and the Prometheus `verdict` label
    /// (`dropped_blocked`, …).
    public var description: String {
        switch self {
        case .passedNoMatch: "passed_no_match"
        case .passedAllowed: "passed_allowed"
        case .passedNotIP: "passed_not_ip"
        case .passedNeighborDiscovery: "passed_neighbor_discovery"
        case .droppedBlocked: "dropped_blocked"
        case .droppedNotAllowed: "dropped_not_allowed"
        case .droppedMalformed: "dropped_malformed"
        }
    }
}
