import StraitNet
import StraitProxy
import StraitSystem

/// How a service spreads new sockets over its live backends.
public enum LBPolicy: String, Sendable, CaseIterable, Codable {
    /// Maglev consistent hashing of the socket cookie: when a backend leaves, only the sockets that
    /// would have gone to it go elsewhere (for connect-time balancing, "clients" are sockets: a
    /// socket's cookie is the one thing about it that is known and stable at connect time, before
    /// the kernel has chosen its source port).
    case maglev
    /// A random entry of a table filled in proportion to the weights: weighted random.
    case random
}

/// The transport a service is for: a TCP service balances `connect()`, a UDP one balances both
/// `connect()` and unconnected `sendmsg()`.
public enum LBProtocol: String, Sendable, CaseIterable, Codable {
    case tcp
    case udp

    /// IPPROTO_TCP or IPPROTO_UDP.
    public var number: UInt8 { self == .tcp ? 6 : 17 }
}

/// One backend of a service.
public struct LBBackendConfig: Sendable, Hashable {
    /// The backend's address, of the service's family.
    public var address: IPAddress
    /// The backend's port (host byte order).
    public var port: UInt16
    /// Relative share, 1...1000.
    public var weight: Int

    /// A backend at `address`:`port` with share `weight`; the loader checks the range, this does
    /// not.
    public init(address: IPAddress, port: UInt16, weight: Int = 1) {
        self.address = address
        self.port = port
        self.weight = weight
    }

    /// `198.18.1.1:8080` or `[2001:db8::1]:8080`.
    public var endpoint: String { address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)" }
}

/// A virtual address and port whose connects go to one of its backends. Backends have the
/// service's address family (an IPv4 service is also reached by AF_INET6 sockets through its
/// IPv4-mapped form, `::ffff:a.b.c.d`).
public struct LBServiceConfig: Sendable, Equatable {
    /// The name `status`, metrics labels and `down SERVICE BACKEND` use.
    public var name: String
    /// The virtual address clients connect to; nothing listens there.
    public var address: IPAddress
    /// The virtual port (host byte order).
    public var port: UInt16
    /// TCP or UDP: which socket calls the cgroup programs rewrite.
    public var transport: LBProtocol
    /// How a backend is picked.
    public var policy: LBPolicy
    /// The backends, in configuration order (their ids follow it).
    public var backends: [LBBackendConfig]
    /// TCP connect checks of every backend; nil: backends are always taken as up.
    public var healthCheck: HealthCheck?

    /// A service; validation (families, weights, duplicates) is the loader's job, not this
    /// initialiser's.
    public init(
        name: String, address: IPAddress, port: UInt16, transport: LBProtocol = .tcp, policy: LBPolicy = .maglev,
        backends: [LBBackendConfig], healthCheck: HealthCheck? = nil
    ) {
        self.name = name
        self.address = address
        self.port = port
        self.transport = transport
        self.policy = policy
        self.backends = backends
        self.healthCheck = healthCheck
    }

    /// `198.18.0.10:80/tcp`.
    public var endpoint: String { (address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)") + "/\(transport.rawValue)" }
}

/// What `strait lb --config FILE` runs: the cgroup whose sockets are balanced, the services, and
/// optionally a Prometheus endpoint.
public struct LBConfig: Sendable, Equatable {
    /// A cgroup v2 directory (absolute path). Sockets created in it or below are balanced.
    public var cgroup: String
    /// The services to balance; their number sizes the maps at start.
    public var services: [LBServiceConfig]
    /// Where to serve Prometheus `/metrics` (on a StraitNet loop the daemon owns); nil: no
    /// endpoint.
    public var metricsAddress: SocketAddress?

    /// A configuration as written; nothing is checked or opened until the daemon starts.
    public init(cgroup: String, services: [LBServiceConfig], metricsAddress: SocketAddress? = nil) {
        self.cgroup = cgroup
        self.services = services
        self.metricsAddress = metricsAddress
    }
}
