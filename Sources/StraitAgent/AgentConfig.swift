import StraitAccel
import StraitBPF
import StraitDrop
import StraitLB
import StraitNet
import StraitProxy
import StraitSystem

/// The desired state of one node, as `strait agent` reads it from one YAML file (see
/// ``AgentConfigLoader``): one optional section per part. A section that is absent means the
/// agent runs nothing of that part (and removes what it made of it before); a plain value, compared
/// with `==` to decide what a reload changes.
public struct AgentConfig: Sendable, Equatable {
    /// Where `/metrics`, `/healthz` and `/readyz` are served. 9478 is not the port of a well-known
    /// Prometheus exporter (node_exporter has 9100, the OpenTelemetry exporter 9464).
    public var metricsAddress: SocketAddress
    /// Same-host acceleration; nil: none.
    public var accel: AccelSection?
    /// XDP early drop; nil: none.
    public var drop: DropSection?
    /// The `strait proxy` configuration, in its own schema, run inside the agent's process.
    public var proxy: ProxyConfig?
    /// Connect-time load balancing, in `strait lb --config`'s schema (without `metrics`: the
    /// agent's endpoint shows the lb's series). Its programs stay attached across agent restarts.
    public var lb: LBConfig?

    /// The default endpoint: loopback only; a fleet scraping from outside binds `0.0.0.0:9478`.
    public static let defaultMetricsAddress = SocketAddress.ip(IPAddress("127.0.0.1")!, port: 9478)

    /// A file with only the given sections.
    public init(
        metricsAddress: SocketAddress = AgentConfig.defaultMetricsAddress, accel: AccelSection? = nil, drop: DropSection? = nil, proxy: ProxyConfig? = nil,
        lb: LBConfig? = nil
    ) {
        self.metricsAddress = metricsAddress
        self.accel = accel
        self.drop = drop
        self.proxy = proxy
        self.lb = lb
    }
}

/// `accel:`: same-host acceleration on one cgroup v2 with one policy (what `strait accel enable`
/// and `strait accel policy` take).
public struct AccelSection: Sendable, Equatable {
    /// The cgroup v2 directory whose sockets are accelerated (absolute path).
    public var cgroup: String
    /// Which sockets are accelerated and how (ports, CIDRs, adaptive or always).
    public var policy: AccelPolicy

    /// The default policy accelerates every socket of the cgroup, adaptively.
    public init(cgroup: String, policy: AccelPolicy = AccelPolicy()) {
        self.cgroup = cgroup
        self.policy = policy
    }
}

/// One interface `strait drop`'s XDP program is attached to.
public struct DropInterface: Sendable, Equatable, Codable {
    /// The interface name (at most 15 bytes).
    public var name: String
    /// Native (in the driver) or generic (after the socket buffer is built).
    public var mode: XDPMode
    /// The named network namespace (`ip netns`) the interface is in; nil: the agent's own.
    public var netns: String?

    /// Native mode in the agent's own namespace by default.
    public init(name: String, mode: XDPMode = .native, netns: String? = nil) {
        self.name = name
        self.mode = mode
        self.netns = netns
    }
}

/// `drop:`: XDP early drop on some interfaces with one rule set (inline or from a rules file).
public struct DropSection: Sendable, Equatable {
    /// Where the program is attached; at least one.
    public var interfaces: [DropInterface]
    /// The mode and rules, inline or read from ``rulesFile`` when the file was checked.
    public var rules: DropRuleSet
    /// The rules file the set was read from, if any (re-read at every reload).
    public var rulesFile: String?
    /// Addresses a rule change must never start dropping (the agent's own management peers, say):
    /// a change that would is refused, and the running rules stay.
    public var protect: [IPAddress]

    /// A block-list with no rules by default: nothing is dropped.
    public init(interfaces: [DropInterface], rules: DropRuleSet = DropRuleSet(), rulesFile: String? = nil, protect: [IPAddress] = []) {
        self.interfaces = interfaces
        self.rules = rules
        self.rulesFile = rulesFile
        self.protect = protect
    }
}
