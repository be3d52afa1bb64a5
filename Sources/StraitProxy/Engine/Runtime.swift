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
    // how many of its connections run on each datapath, for the status (Observe/ProxyStatus.swift).
    let datapaths = DatapathMix()

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
    /// How to wake each loop's acceptor that stopped accepting at `max_connections`; woken by
    /// ``releaseSlot()``.
    private let slotWaiters = AcceptorWakeList()

    init(fd: CInt, address: SocketAddress, settings: ListenerSettings) {
        self.fd = fd
        self.address = address
        self.settings = Mutex(settings)
    }

    var name: String { settings.withLock { $0.config.name } }

    /// Takes a connection slot (``active`` + 1) when fewer than `limit` are taken; false at the
    /// limit. A compare-and-swap, so loops accepting at once never go over it together.
    func reserveSlot(limit: Int) -> Bool {
        var current = active.load(ordering: .sequentiallyConsistent)
        while current < limit {
            let (exchanged, original) = active.compareExchange(expected: current, desired: current + 1, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives a slot back (a connection ended, or an accept found no client) and wakes the
    /// acceptors paused at the limit. One atomic subtract and load when none is paused.
    func releaseSlot() {
        active.subtract(1, ordering: .sequentiallyConsistent)
        wakeSlotWaiters()
    }

    /// Wakes the acceptors paused at the limit (a slot was released, or a reload changed
    /// `max_connections`); each looks at the limit again on its loop.
    func wakeSlotWaiters() { slotWaiters.wakeAll() }

    /// Has `wake` called at the next ``releaseSlot()``. True when no other acceptor was waiting
    /// already (the listener has just reached its limit). The caller looks at ``active`` again
    /// after this: a slot released in between woke nobody.
    func waitForSlot(_ wake: @escaping @Sendable () -> Void) -> Bool { slotWaiters.add(wake) }

    /// Whether acceptors are paused at `max_connections` now.
    var atLimit: Bool { !slotWaiters.isEmpty }
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
    /// Descriptors relays may hold, under RLIMIT_NOFILE less a reserve (Engine/DescriptorBudget.swift).
    let descriptors = DescriptorBudget()
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
