import Logging
import StraitNet
import Synchronization

/// One upstream's live state, shared by every listener and reload that names its address: health
/// (written from the ``HealthChecker``'s changes) and active connections (for least-connections).
/// Equal only to itself: it keys the health checker's targets.
final class UpstreamState: Sendable, Hashable {
    let address: SocketAddress
    let healthy = Atomic<Bool>(true)
    let active = Atomic<Int>(0)
    // drain and passive-health state (Balancer.swift).
    let admission = UpstreamAdmission()

    init(address: SocketAddress) {
        self.address = address
    }

    static func == (lhs: UpstreamState, rhs: UpstreamState) -> Bool { lhs === rhs }
    func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// A cluster as configured at one reload: its members with weights and the balancer over them.
/// A new config builds new clusters; relays keep the cluster they started with.
final class ClusterRuntime: Sendable {
    let config: ClusterConfig
    let members: [UpstreamState]
    let balancer: Balancer

    init(config: ClusterConfig, states: [UpstreamState]) {
        self.config = config
        self.members = states
        self.balancer = Balancer(cluster: config, members: states)  // backups, passive health, retries
    }
}

/// How a listener currently behaves; replaced as a whole on reload.
struct ListenerSettings: Sendable {
    var config: ListenerConfig
    var cluster: ClusterRuntime
}

/// A bound listening socket and its current settings. The socket survives reloads that keep its
/// address, so clients never see a refused connection during a reload.
final class ListenerRuntime: Sendable {
    let fd: CInt
    let address: SocketAddress
    let settings: Mutex<ListenerSettings>
    let active = Atomic<Int>(0)
    /// Set before the socket is closed (reload, drain): an acceptor backing off must not poll it
    /// again, its number may be reused.
    let closed = Atomic<Bool>(false)
    /// Accepting is backing off for lack of descriptors: logged once per episode, over all loops.
    let outOfDescriptors = Atomic<Bool>(false)

    init(fd: CInt, address: SocketAddress, settings: ListenerSettings) {
        self.fd = fd
        self.address = address
        self.settings = Mutex(settings)
    }

    var name: String { settings.withLock { $0.config.name } }
}

/// What every relay needs from the proxy: the kernel datapath (if loaded), metrics, logs, timings.
final class ProxyContext: Sendable {
    let forwarder: SockmapForwarder?
    /// Why ``forwarder`` is nil, said once at start.
    let sockmapUnavailable: String?
    let metrics: ProxyMetrics
    let logger: Logger
    let accessLog = Atomic<Bool>(true)
    /// The skmsg datapath, when an endpoints cgroup is configured and the programs attached.
    let endpoints: EndpointForwarder?
    /// Every interval the engine waits by.
    let timings: ProxyTimings
    /// Access lines go through this bounded queue to its writer thread (Observe/AccessLog.swift).
    let accessLogWriter: AccessLog

    init(forwarder: SockmapForwarder?, sockmapUnavailable: String?, endpoints: EndpointForwarder?, metrics: ProxyMetrics, logger: Logger, accessLogWriter: AccessLog, timings: ProxyTimings = .standard) {
        self.timings = timings
        self.accessLogWriter = accessLogWriter
        self.forwarder = forwarder
        self.sockmapUnavailable = sockmapUnavailable
        self.endpoints = endpoints
        self.metrics = metrics
        self.logger = logger
    }
}
