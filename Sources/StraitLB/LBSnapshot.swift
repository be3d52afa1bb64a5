/// What `strait lb status` shows: the services, their backends with health and the connects each
/// received (from the per-CPU counters), and the program's totals. Codable, so the running
/// process publishes it as JSON and `status --json` prints it unchanged.
public struct LBSnapshot: Sendable, Codable, Equatable {
    public struct Backend: Sendable, Codable, Equatable {
        /// The kernel id (a key of `lb_backends`), stable while the process runs.
        public var id: UInt32
        public var endpoint: String
        public var weight: Int
        /// False while health checks hold it down: it gets no new connections.
        public var up: Bool
        /// connect() calls sent to it.
        public var connects: UInt64
        /// Unconnected UDP sendmsg() calls sent to it.
        public var datagrams: UInt64
    }

    public struct Service: Sendable, Codable, Equatable {
        public var name: String
        public var endpoint: String
        public var policy: LBPolicy
        public var healthChecked: Bool
        public var backends: [Backend]
    }

    /// Totals over every service.
    public struct Counters: Sendable, Codable, Equatable {
        public var balanced: UInt64
        /// Refused with ECONNREFUSED: no live backend.
        public var refused: UInt64
        /// getpeername and recvmsg answers turned back into the service address.
        public var reversed: UInt64
    }

    public var cgroup: String
    public var services: [Service]
    public var counters: Counters
}
