import Foundation
import Logging
import StraitExposition
import StraitBPF
import StraitKernelABI
import StraitNet
import StraitProxy
import StraitSystem

/// What `strait lb --config FILE` runs: a ``LoadBalancer`` on the configured cgroup, the health
/// checks of its backends (each change of health is applied at once), an optional Prometheus
/// endpoint, and the state `strait lb status` reads (`state.json` in the state directory, the
/// counters pinned in bpffs). Everything is undone by ``stop()``; a crash leaves only the pins
/// and the state file, which the next start replaces, while the kernel drops the links with the
/// process.
///
/// With `persistent` (the node agent's lb), the balancer is a persistent ``LoadBalancer``: its
/// links and maps stay pinned when the process ends, a start adopts them when they are on the same
/// cgroup (writing only what differs from the file), ``stop()`` leaves them balancing, and
/// ``remove()`` detaches them.
public final class LBDaemon: @unchecked Sendable {
    /// Where the state file lives by default.
    public static let defaultStateDirectory = "/run/strait/lb"
    /// Where the counters are pinned by default.
    public static let defaultPinDirectory = BPFFS.defaultMount + "/strait/lb"

    /// The balancer this process drives (owned: closed by ``stop()``).
    public let balancer: LoadBalancer
    /// True when the start opened a persistent balancer's pins instead of loading anew.
    public let adopted: Bool
    /// How many services the start had to change in the kernel (0: the pins already matched).
    public let changedAtStart: Int
    private let stateDirectory: String
    private let logger: Logger
    private let lock = NSLock()
    private var config: LBConfig
    private var down: Set<LBBackendRef> = []
    private let group: EventLoopGroup
    private var checker: LBHealthChecker?
    private var metrics: PlainHTTPEndpoint?

    /// Where a persistent daemon keeps its balancer: the pin directory, and `tables.json` in the state directory.
    public static func persistence(stateDirectory: String, pinDirectory: String) -> LBPersistence {
        LBPersistence(pinDirectory: pinDirectory, recordFile: stateDirectory + "/tables.json")
    }

    /// Starts balancing `config` and its checks. Throws ``LBError/alreadyRunning(_:)`` when a live
    /// process holds the state directory. With `persistent`, adopts the balancer pinned there when
    /// it is on the same cgroup and large enough, else replaces it with a new persistent one.
    public init(
        config: LBConfig, stateDirectory: String = defaultStateDirectory, pinDirectory: String = defaultPinDirectory, persistent: Bool = false,
        logger: Logger
    ) throws {
        let statePath = LBStatus.statePath(in: stateDirectory)
        if let previous = try? LBStatus.readState(path: statePath), previous.pid != getpid(), ProcessCall.isAlive(previous.pid) {
            throw LBError.alreadyRunning(statePath)
        }
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        self.config = config
        self.stateDirectory = stateDirectory
        self.logger = logger
        let cgroup = Cgroup(path: config.cgroup)
        let capacity = max(Int(STRAIT_LB_MAX_SERVICES), config.services.count * 2)
        if persistent {
            let persistence = Self.persistence(stateDirectory: stateDirectory, pinDirectory: pinDirectory)
            if let existing = LoadBalancer.adopt(cgroup: cgroup, persistence: persistence), existing.capacity >= config.services.count {
                balancer = existing
                adopted = true
            } else {
                balancer = try LoadBalancer(cgroup: cgroup, capacity: capacity, persistingIn: persistence)
                adopted = false
            }
        } else {
            balancer = try LoadBalancer(cgroup: cgroup, capacity: capacity, pinDirectory: pinDirectory)
            adopted = false
        }
        do {
            group = try EventLoopGroup(loopCount: 1)
        } catch {
            Self.abandon(balancer, adopted: adopted)
            throw error
        }
        do {
            changedAtStart = try balancer.apply(config.services)
            let checker = LBHealthChecker(group: group, logger: logger) { [weak self] down in self?.healthChanged(down) }
            checker.configure(config.services)
            self.checker = checker
            if let address = config.metricsAddress {
                metrics = try PlainHTTPEndpoint(address: address, routes: ["/metrics": { [weak self] in
                    guard let snapshot = try? self?.balancer.snapshot() else { return .init(body: "") }
                    return .init(body: LBMetrics.exposition(snapshot))
                }])
                logger.info("metrics on http://\(metrics!.address)/metrics")
            }
            try publish()
        } catch {
            checker?.stop()
            group.shutdown()
            Self.abandon(balancer, adopted: adopted)
            throw error
        }
    }

    /// A start that failed: closes the balancer, and removes a persistent one it had just made
    /// (nothing would own its pins); an adopted one stays as it was found.
    private static func abandon(_ balancer: LoadBalancer, adopted: Bool) {
        balancer.close()
        if !adopted { try? balancer.persistence?.remove() }
    }

    /// The metrics endpoint's bound address, if one runs.
    public var metricsAddress: SocketAddress? { metrics?.address }

    /// The configuration in force (the last one applied).
    public var currentConfig: LBConfig { lock.withLock { config } }

    /// Applies a new configuration (same cgroup; services, backends and checks may all change).
    /// Returns how many services the kernel had to change.
    @discardableResult
    public func reload(_ next: LBConfig) throws -> Int {
        let changed = try lock.withLock { () throws -> Int in
            let changed = try balancer.apply(next.services, down: down)
            config = next
            return changed
        }
        checker?.configure(next.services)
        try publish()
        return changed
    }

    /// Stops the checks and the metrics endpoint and removes the state file. The programs are
    /// detached, unless the daemon is persistent: then they stay balancing through their pins.
    public func stop() async {
        checker?.stop()
        checker = nil
        await metrics?.shutdown()
        metrics = nil
        group.shutdown()
        balancer.close()
        try? FileManager.default.removeItem(atPath: LBStatus.statePath(in: stateDirectory))
    }

    /// Stops, and for a persistent daemon also detaches and unpins its balancer and deletes its record.
    public func remove() async throws {
        await stop()
        try balancer.persistence?.remove()
    }

    private func healthChanged(_ next: Set<LBBackendRef>) {
        do {
            try lock.withLock { () throws in
                try balancer.apply(config.services, down: next)
                down = next
            }
            try publish()
        } catch {
            logger.error("applying a health change failed: \(error)")
        }
    }

    /// Writes the state file status reads (atomically: a reader sees the old file or the new one).
    private func publish() throws {
        let state = LBStatus.State(pid: getpid(), snapshot: try balancer.snapshot())
        let data = try JSONEncoder().encode(state)
        try data.write(to: URL(fileURLWithPath: LBStatus.statePath(in: stateDirectory)), options: .atomic)
    }
}

/// The Prometheus text of a snapshot, written fresh at each scrape from the kernel's counters
/// (summed over CPUs), so a backend that left the config leaves the exposition too:
///
/// - `strait_lb_backend_up{service,backend}` (gauge: 1 up, 0 down)
/// - `strait_lb_backend_connects_total{service,backend}`, `strait_lb_backend_datagrams_total{service,backend}`
/// - `strait_lb_balanced_total`, `strait_lb_refused_total`, `strait_lb_reversed_total`
public enum LBMetrics {
    /// The exposition of `snapshot`, every family with HELP and TYPE. Allocates the text; no syscalls.
    public static func exposition(_ snapshot: LBSnapshot) -> String {
        var text = PrometheusText()
        let backends = snapshot.services.flatMap { service in
            service.backends.map { (labels: [("service", service.name), ("backend", $0.endpoint)], backend: $0) }
        }
        text.gauge("strait_lb_backend_up", "1 while the backend gets new connections, 0 while health checks hold it down.", backends.map { ($0.labels, $0.backend.up ? 1 : 0) })
        text.counter("strait_lb_backend_connects_total", "connect() calls the cgroup programs sent to the backend.", backends.map { ($0.labels, $0.backend.connects) })
        text.counter("strait_lb_backend_datagrams_total", "Unconnected UDP sendmsg() calls the cgroup programs sent to the backend.", backends.map { ($0.labels, $0.backend.datagrams) })
        text.counter("strait_lb_balanced_total", "Socket calls to a service address that the programs sent to a backend.", snapshot.counters.balanced)
        text.counter("strait_lb_refused_total", "Socket calls to a service address refused with ECONNREFUSED: no live backend.", snapshot.counters.refused)
        text.counter("strait_lb_reversed_total", "getpeername and recvmsg answers turned back into the service address.", snapshot.counters.reversed)
        return text.text
    }
}
