import StraitDrop
import StraitSystem

/// A rate in bits per second, as operators and `tc` write them: `100mbit`, `1.5gbit`, `250kbit`,
/// `10Mbit/s`, or a bare number of bits per second. Units are decimal (1 mbit = 10^6 bits).
public struct LimitRate: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// Bits per second on the wire (headers included, as tc counts them).
    public var bitsPerSecond: UInt64

    /// A rate of exactly `bitsPerSecond`.
    public init(bitsPerSecond: UInt64) { self.bitsPerSecond = bitsPerSecond }

    /// Parses the forms above; nil for anything else, or for zero.
    public init?(parsing text: String) {
        var body = text.lowercased().trimmingCharacters(in: [" "])
        if body.hasSuffix("/s") { body.removeLast(2) }
        if body.hasSuffix("bps") { body.removeLast(3); body += "bit" }
        let units: [(String, Double)] = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1)]
        var scale = 1.0
        for (suffix, factor) in units where body.hasSuffix(suffix) {
            body.removeLast(suffix.count)
            scale = factor
            break
        }
        guard let value = Double(body), value > 0, value * scale >= 8, value * scale < 1e13 else { return nil }
        bitsPerSecond = UInt64((value * scale).rounded())
    }

    /// The value `SO_MAX_PACING_RATE` and the EDT program take.
    public var bytesPerSecond: UInt64 { bitsPerSecond / 8 }

    /// Orders by bits per second.
    public static func < (lhs: LimitRate, rhs: LimitRate) -> Bool { lhs.bitsPerSecond < rhs.bitsPerSecond }

    /// The rate in the largest decimal unit that fits (`100 Mbit/s`, `1.5 Gbit/s`, `800 bit/s`).
    public var description: String {
        let value = Double(bitsPerSecond)
        for (unit, factor) in [("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)] where value >= factor {
            let scaled = value / factor
            return (scaled == scaled.rounded() ? String(Int(scaled)) : String(format: "%.3g", scaled)) + " " + unit
        }
        return "\(bitsPerSecond) bit/s"
    }

    /// Encodes as a bare number of bits per second (what `--json` and the pinned state carry).
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(bitsPerSecond)
    }

    /// Decodes the bare bits-per-second number ``encode(to:)`` writes.
    public init(from decoder: Decoder) throws {
        bitsPerSecond = try decoder.singleValueContainer().decode(UInt64.self)
    }
}

private extension String {
    func trimmingCharacters(in set: Set<Character>) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}

/// Which traffic a limit applies to, and how.
///
/// - ``Scope-swift.enum/connection``: each matching TCP connection of a cgroup's processes is paced
///   to the rate on its own (ten connections get ten times the rate). Matches the cgroup's sockets,
///   narrowed by at most one of a local port, a remote port or a remote prefix.
/// - ``Scope-swift.enum/aggregate``: every packet leaving an interface that comes from the cgroup's
///   sockets, or goes to the remote prefix, shares one rate (ten connections share it).
///
/// A cgroup is matched exactly: sockets of its child cgroups are not covered by its rules.
public struct LimitSelector: Sendable, Hashable, Encodable, CustomStringConvertible {
    /// Whether each connection gets the rate or all matching traffic shares it.
    public enum Scope: String, Sendable, Codable {
        case connection
        case aggregate
    }

    /// How the rate applies.
    public let scope: Scope
    /// The cgroup v2 id (its directory's inode number): always set for per-connection rules.
    public let cgroupID: UInt64?
    /// The interface whose egress an aggregate rule limits.
    public let interface: String?
    /// Per connection: only sockets bound to this local port (a server's).
    public let localPort: UInt16?
    /// Per connection: only sockets connected to this remote port.
    public let remotePort: UInt16?
    /// Only traffic to (per connection: connections with) an address in this prefix.
    public let remote: IPPrefix?

    /// A per-connection selector: the cgroup's TCP connections, optionally only those on a local
    /// port, to a remote port or to a remote prefix (at most one of the three).
    public static func connection(cgroupID: UInt64, localPort: UInt16? = nil, remotePort: UInt16? = nil, remote: IPPrefix? = nil) throws(LimitError) -> LimitSelector {
        if [localPort != nil, remotePort != nil, remote != nil].filter({ $0 }).count > 1 {
            throw .invalidSelector("a per-connection rule takes at most one of --local-port, --remote-port and --remote")
        }
        return LimitSelector(scope: .connection, cgroupID: cgroupID, interface: nil, localPort: localPort, remotePort: remotePort, remote: remote)
    }

    /// An aggregate selector on `interface`'s egress: traffic of one cgroup's sockets, or traffic to one prefix.
    public static func aggregate(interface: String, cgroupID: UInt64? = nil, remote: IPPrefix? = nil) throws(LimitError) -> LimitSelector {
        guard (cgroupID == nil) != (remote == nil) else {
            throw .invalidSelector("an aggregate rule takes exactly one of --cgroup and --remote (the client or network whose traffic shares the rate)")
        }
        return LimitSelector(scope: .aggregate, cgroupID: cgroupID, interface: interface, localPort: nil, remotePort: nil, remote: remote)
    }

    /// A one-line summary for `strait limit list`; names the cgroup by path when it still exists
    /// (one lookup under /sys/fs/cgroup).
    public var description: String {
        var parts: [String] = []
        switch scope {
        case .connection: parts.append("per connection")
        case .aggregate: parts.append("aggregate on \(interface ?? "?")")
        }
        if let cgroupID { parts.append("cgroup \(Cgroup.find(id: cgroupID)?.path ?? "id \(cgroupID)")") }
        if let localPort { parts.append("local port \(localPort)") }
        if let remotePort { parts.append("remote port \(remotePort)") }
        if let remote { parts.append("remote \(remote)") }
        return parts.joined(separator: ", ")
    }

    enum CodingKeys: String, CodingKey { case scope, cgroupID, cgroup, interface, localPort, remotePort, remote }

    /// Encodes the fields, plus the cgroup's current path next to its id (looked up under
    /// /sys/fs/cgroup when encoding).
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(scope, forKey: .scope)
        try container.encodeIfPresent(cgroupID, forKey: .cgroupID)
        try container.encodeIfPresent(cgroupID.flatMap { Cgroup.find(id: $0)?.path }, forKey: .cgroup)
        try container.encodeIfPresent(interface, forKey: .interface)
        try container.encodeIfPresent(localPort, forKey: .localPort)
        try container.encodeIfPresent(remotePort, forKey: .remotePort)
        try container.encodeIfPresent(remote?.description, forKey: .remote)
    }

    /// Whether a connection from `source` to local TCP port `port` (an SSH session) would match.
    /// Cgroup-wide rules are not checked: which cgroup holds another process's socket is not known here.
    func matches(protected source: ProtectedSource) -> Bool {
        if let remote { return remote.contains(source.address) }
        if let localPort { return scope == .connection && localPort == source.tcpPort }
        return false
    }
}

/// One rule as the maps hold it.
public struct LimitRule: Sendable, Hashable, Encodable, CustomStringConvertible {
    /// Never reused, so a new rule never inherits an old rule's counters.
    public var id: UInt32
    /// Which traffic it covers.
    public var selector: LimitSelector
    /// Its rate.
    public var rate: LimitRate

    /// The rate followed by the selector, as `strait limit list` prints a rule.
    public var description: String { "\(rate) \(selector)" }
}
