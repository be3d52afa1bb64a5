/// What `strait lb status` shows: the services, their backends with health and the connects each
/// received (from the per-CPU counters), and the program's totals. Codable, so the running
/// process publishes it as JSON and `status --json` prints it unchanged.
public struct LBSnapshot: Sendable, Codable, Equatable {
    /// One backend's health and counters.
    public struct Backend: Sendable, Codable, Equatable {
        /// The kernel id (a key of `lb_backends`), stable while the process runs.
        public var id: UInt32
        /// `address:port`, as ``LBBackendConfig/endpoint`` writes it.
        public var endpoint: String
        /// Its configured share.
        public var weight: Int
        /// False while health checks hold it down: it gets no new connections.
        public var up: Bool
        /// connect() calls sent to it.
        public var connects: UInt64
        /// Unconnected UDP sendmsg() calls sent to it.
        public var datagrams: UInt64
    }

    /// One service and its backends.
    public struct Service: Sendable, Codable, Equatable {
        /// The configured name.
        public var name: String
        /// `address:port/transport`, as ``LBServiceConfig/endpoint`` writes it.
        public var endpoint: String
        /// How it picks backends.
        public var policy: LBPolicy
        /// Whether health checks run: if not, every backend is always up.
        public var healthChecked: Bool
        /// Its backends, in configuration order.
        public var backends: [Backend]
    }

    /// Totals over every service.
    public struct Counters: Sendable, Codable, Equatable {
        /// Socket calls to a service address that the programs sent to a backend.
        public var balanced: UInt64
        /// Refused with ECONNREFUSED: no live backend.
        public var refused: UInt64
        /// getpeername and recvmsg answers turned back into the service address.
        public var reversed: UInt64
    }

    /// The cgroup v2 directory whose sockets are balanced.
    public var cgroup: String
    /// Every service, in configuration order.
    public var services: [Service]
    /// The programs' totals, summed over CPUs.
    public var counters: Counters
}
