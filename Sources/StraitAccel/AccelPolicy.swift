import StraitKernelABI
import StraitSystem

/// Which sockets Strait accelerates and how it decides per direction. Lives in maps, so it can
/// change while acceleration is on without reloading a program.
public struct AccelPolicy: Sendable, Equatable, Codable {
    /// Track only sockets whose local or remote port is listed; empty means every port.
    public var ports: [UInt16] = []
    /// Never track sockets with one of these local or remote ports: services whose receivers use
    /// splice(2), which cannot read redirected bytes (tcp_bpf has no splice_read).
    public var excludePorts: [UInt16] = []
    /// Track only sockets whose remote address is in one of these prefixes; empty means any address.
    public var cidrs: [String] = []
    /// Adaptive (default): each direction keeps redirecting only if it sends bulk (see ``bulkBytes``)
    /// or alternates sends with receives; a direction that streams small writes goes back to the
    /// stack, where TCP batches them better. Off: every direction redirects from its first send.
    public var adaptive: Bool = true
    /// A send of at least this many bytes keeps its direction redirecting.
    public var bulkBytes: UInt32 = 16384
    /// Sends after which a direction with neither bulk nor request/response traffic goes to the stack.
    public var probeSends: UInt32 = 32
    /// Sends that follow a receive (request/response) after which a direction keeps redirecting.
    public var idleSends: UInt32 = 3

    public init() {}

    /// Parses the CIDR strings, naming the first bad one.
    public func parsedCIDRs() throws(AccelError) -> [IPPrefix] {
        try cidrs.map { (text: String) throws(AccelError) -> IPPrefix in
            guard let prefix = IPPrefix(text) else { throw AccelError.badPolicy("'\(text)' is not an address prefix such as 127.0.0.0/8 or ::1/128") }
            return prefix
        }
    }

    func config(redirect: Bool) -> strait_accel_config {
        var flags: UInt32 = 0
        if redirect { flags |= STRAIT_ACCEL_REDIRECT.rawValue }
        if !ports.isEmpty { flags |= STRAIT_ACCEL_PORT_FILTER.rawValue }
        if !cidrs.isEmpty { flags |= STRAIT_ACCEL_CIDR_FILTER.rawValue }
        if adaptive { flags |= STRAIT_ACCEL_ADAPTIVE.rawValue }
        return strait_accel_config(flags: flags, bulk_bytes: bulkBytes, probe_sends: probeSends, idle_sends: idleSends)
    }

    init(config: strait_accel_config, ports: [UInt16], excludePorts: [UInt16], cidrs: [String]) {
        self.ports = ports.sorted()
        self.excludePorts = excludePorts.sorted()
        self.cidrs = cidrs.sorted()
        adaptive = config.flags & STRAIT_ACCEL_ADAPTIVE.rawValue != 0
        bulkBytes = config.bulk_bytes
        probeSends = config.probe_sends
        idleSends = config.idle_sends
    }
}

/// What went wrong in `strait accel`, and what to do.
public enum AccelError: Error, CustomStringConvertible {
    case badPolicy(String)
    case notEnabled(String)
    case enabledElsewhere(current: String, requested: String)

    public var description: String {
        switch self {
        case .badPolicy(let why): "bad acceleration policy: \(why)"
        case .notEnabled(let directory): "acceleration is not enabled (nothing pinned at \(directory)): run `strait accel enable` first"
        case .enabledElsewhere(let current, let requested):
            "acceleration is already enabled on cgroup \(current), not \(requested): run `strait accel disable` first, or enable with --cgroup \(current)"
        }
    }
}
