import Foundation
import Logging
import StraitAccel
import Prometheus
import StraitDrop
import StraitLB
import StraitNet
import StraitProxy
import StraitSystem
import Synchronization

/// Why the agent could not start (a file that does not check is an ``AgentConfigError``).
public enum AgentError: Error, CustomStringConvertible {
    /// The `metrics` address could not be bound.
    case endpoint(address: String, SystemCallError)

    /// What went wrong and what to do, on one line.
    public var description: String {
        switch self {
        case .endpoint(let address, let error):
            "cannot serve /metrics, /healthz and /readyz on \(address): \(error). Free that port or set another `metrics:` address in the file; the kernel state was reconciled and stays"
        }
    }
}

/// One node's agent: holds the desired state of one file and keeps the kernel at it.
///
/// ``start()`` checks the file, reconciles (adopting pins that already match, so restarting the
/// agent drops no accelerated socket, no rule and no balanced service), starts the proxy and the lb's
/// health checks if the file has them, and serves
/// `/metrics`, `/healthz` and `/readyz`. ``reload()`` re-reads the file: one that does not check is
/// rejected whole and nothing changes; one that does is applied part by part, only where the
/// kernel differs. ``stop()`` ends the process's work (the proxy drains) and leaves the kernel
/// state pinned for the next agent; ``KernelReconciler/cleanup(state:)`` removes it.
///
/// The agent owns the proxy it runs, the lb daemon (its health checks; the lb's links and maps are
/// pinned, so they outlive the agent like accel's and drop's) and the HTTP endpoint; the pins belong
/// to the kernel and are recorded in ``AgentState``. Calls are serialised by one lock: a scrape
/// waits for a reload.
public final class Agent: @unchecked Sendable {
    /// What the agent is started with (the command line's options).
    public struct Options: Sendable {
        /// The agent file, re-read at every reload.
        public var configPath: String
        /// The pin root and the state file.
        public var paths: AgentPaths
        /// The build, for `strait_build_info`.
        public var version: String
        /// systemd's notify socket; `ServiceNotifier()` reads `NOTIFY_SOCKET`.
        public var notifier: ServiceNotifier
        /// Event loop threads of the proxy, when the file has one.
        public var proxyThreads: Int
        /// Overrides the file's `metrics` address (tests bind port 0).
        public var metricsAddress: SocketAddress?

        /// The defaults are the installed paths, the version unknown, and `NOTIFY_SOCKET` from the environment.
        public init(
            configPath: String, paths: AgentPaths = AgentPaths(), version: String = "unknown", notifier: ServiceNotifier = ServiceNotifier(),
            proxyThreads: Int = 2, metricsAddress: SocketAddress? = nil
        ) {
            self.configPath = configPath
            self.paths = paths
            self.version = version
            self.notifier = notifier
            self.proxyThreads = proxyThreads
            self.metricsAddress = metricsAddress
        }
    }

    /// What a start or reload did.
    public struct Outcome: Sendable {
        /// Nil when the file was applied; else why it was rejected (nothing changed).
        public var rejected: AgentConfigError?
        /// Per part; empty when rejected.
        public var changes: [PartChange]
        /// How the kernel still differs from the file after applying it (empty: ready).
        public var differences: [String]
    }

    /// What the agent was started with.
    public let options: Options
    /// Where reconcile results and rejected reloads are logged.
    public let logger: Logger
    private let reconciler: KernelReconciler
    private let metrics: AgentMetrics
    private let lock = NSLock()
    private var config: AgentConfig?
    private var state: AgentState
    private var proxy: Proxy?
    private var lb: LBDaemon?
    private var endpoint: PlainHTTPEndpoint?

    /// Reads the state record; nothing is applied before ``start()``.
    public init(options: Options, logger: Logger = Logger(label: "strait.agent")) {
        self.options = options
        self.logger = logger
        reconciler = KernelReconciler(paths: options.paths)
        metrics = AgentMetrics(version: options.version)
        state = AgentState.read(options.paths.stateFile)
    }

    /// The bound address of `/metrics`, `/healthz` and `/readyz` once started.
    public var endpointAddress: SocketAddress? { lock.withLock { endpoint?.address } }

    /// The running proxy, if the file has a `proxy` section.
    public var runningProxy: Proxy? { lock.withLock { proxy } }

    /// The running lb daemon, if the file has an `lb` section.
    public var runningLB: LBDaemon? { lock.withLock { lb } }

    /// Checks the file (throwing ``AgentConfigError`` with every problem when it does not check:
    /// nothing is applied then), reconciles, serves the endpoint and tells systemd it is ready.
    /// A part that fails to apply is logged and leaves the agent not ready, but the agent runs.
    @discardableResult
    public func start() throws -> Outcome {
        try? options.notifier.send(.status("reconciling \(options.configPath)"))
        let loaded = try AgentConfigLoader.load(path: options.configPath)
        let outcome = lock.withLock { apply(loaded) }
        let address = options.metricsAddress ?? loaded.metricsAddress
        let endpoint: PlainHTTPEndpoint
        do {
            endpoint = try serve(on: address)
        } catch {
            throw AgentError.endpoint(address: "\(address)", error)
        }
        lock.withLock { self.endpoint = endpoint }
        logger.notice("serving", metadata: ["metrics": "http://\(endpoint.address)/metrics"])
        try? options.notifier.send(.ready, .status(Self.summary(outcome)))
        return outcome
    }

    /// Binds the endpoint: `/metrics`, `/healthz` (the process serves), `/readyz` (the kernel matches the file).
    private func serve(on address: SocketAddress) throws(SystemCallError) -> PlainHTTPEndpoint {
        try PlainHTTPEndpoint(address: address, routes: [
            "/metrics": { [weak self] in .init(body: self?.metricsText() ?? "") },
            "/healthz": { .init(body: "ok\n", contentType: "text/plain; charset=utf-8") },
            "/readyz": { [weak self] in
                let differences = self?.differences() ?? ["stopping"]
                return differences.isEmpty
                    ? .init(body: "ready: the kernel matches the file\n", contentType: "text/plain; charset=utf-8")
                    : .init(status: 503, body: differences.joined(separator: "\n") + "\n", contentType: "text/plain; charset=utf-8")
            },
        ])
    }

    /// Re-reads the file and applies only what differs from the kernel. A file that does not check
    /// is rejected whole: the running state stays, and the reason is logged and returned.
    @discardableResult
    public func reload() -> Outcome {
        try? options.notifier.send(.reloading)
        let outcome: Outcome
        do {
            let loaded = try AgentConfigLoader.load(path: options.configPath)
            outcome = lock.withLock { apply(loaded) }
            metrics.reload(applied: true)
        } catch {
            logger.error("reload rejected, the running state stays:\n\(error)")
            metrics.reload(applied: false)
            outcome = Outcome(rejected: error, changes: [], differences: differences())
        }
        try? options.notifier.send(.ready, .status(Self.summary(outcome)))
        return outcome
    }

    /// Stops serving, the lb's health checks and drains the proxy; the pinned kernel state (the lb's
    /// links included) stays for the next agent.
    public func stop() async {
        try? options.notifier.send(.stopping, .status("stopping; the kernel state stays pinned"))
        let (endpoint, proxy, lb, drain) = lock.withLock { () -> (PlainHTTPEndpoint?, Proxy?, LBDaemon?, Duration) in
            defer {
                self.endpoint = nil
                self.proxy = nil
                self.lb = nil
            }
            return (self.endpoint, self.proxy, self.lb, config?.proxy?.drainTimeout ?? .seconds(30))
        }
        await endpoint?.shutdown()
        await lb?.stop()
        await proxy?.shutdown(drainTimeout: drain)
    }

    /// How the kernel (and the proxy) differ from the file now; empty when ready.
    public func differences() -> [String] {
        lock.withLock {
            guard let config else { return ["no configuration applied yet"] }
            return kernelDifferences(config)
        }
    }

    /// The differences for `config`, recorded as `strait_agent_in_sync`. Lock held.
    private func kernelDifferences(_ config: AgentConfig) -> [String] {
        var differences = reconciler.accelDifferences(config.accel, state: state) + reconciler.dropDifferences(config.drop, state: state)
        if config.proxy != nil && proxy == nil { differences.append("proxy: not running") }
        differences += lbDifferences(config.lb)
        metrics.setInSync(differences.isEmpty)
        return differences
    }

    /// Every part's series in the Prometheus text format: the agent's own, then accel's, drop's and
    /// lb's kernel counters (read now; drop's costs two map syscalls per rule, lb's one per backend)
    /// and the proxy's.
    public func metricsText() -> String {
        _ = differences()
        return lock.withLock {
            var text = metrics.exposition()
            if let status = try? Accelerator.status(pinDirectory: options.paths.accelDirectory), status.enabled {
                text += status.prometheusText()
            }
            if Dropper.isLoaded(pinDirectory: options.paths.dropDirectory), let stats = try? Dropper.open(pinDirectory: options.paths.dropDirectory).stats() {
                text += stats.prometheusText()
            }
            if let proxy { text += proxy.metricsText() }
            if let lb, let snapshot = try? lb.balancer.snapshot() { text += LBMetrics.exposition(snapshot) }
            return text
        }
    }

    /// Applies a checked configuration part by part. Lock held.
    private func apply(_ next: AgentConfig) -> Outcome {
        var changes = [reconciler.reconcileAccel(next.accel, state: &state), reconciler.reconcileDrop(next.drop, state: &state)]
        changes.append(reconcileProxy(next.proxy))
        changes.append(reconcileLB(next.lb))
        do { try state.write(options.paths.stateFile) } catch {
            logger.error("cannot record the agent state at \(options.paths.stateFile): \(error); `strait agent cleanup` will not know what this agent made")
        }
        let wantedAddress = options.metricsAddress ?? next.metricsAddress
        if let endpoint, wantedAddress != endpoint.address, wantedAddress.port != 0 {
            logger.warning("`metrics` changed to \(wantedAddress); it applies at the next start, \(endpoint.address) stays until then")
        }
        config = next
        metrics.reconciled(changes, at: Date().timeIntervalSince1970)
        for change in changes where change.action != .unchanged {
            if change.action == .failed { logger.error("\(change)") } else { logger.notice("\(change)") }
        }
        return Outcome(rejected: nil, changes: changes, differences: kernelDifferences(next))
    }

    /// Starts, reloads or stops the in-process proxy. Lock held.
    private func reconcileProxy(_ wanted: ProxyConfig?) -> PartChange {
        guard let wanted else {
            guard let running = proxy else { return PartChange(part: "proxy", action: .unchanged, detail: "not configured") }
            proxy = nil
            let drain = config?.proxy?.drainTimeout ?? .seconds(30)
            Self.waitFor { await running.shutdown(drainTimeout: drain) }
            return PartChange(part: "proxy", action: .removed)
        }
        if let running = proxy {
            if wanted == config?.proxy { return PartChange(part: "proxy", action: .unchanged) }
            do {
                try running.reload(wanted)
                return PartChange(part: "proxy", action: .updated, detail: "\(wanted.listeners.count) listener(s)")
            } catch {
                return PartChange(part: "proxy", action: .failed, detail: "\(error); the previous configuration runs on")
            }
        }
        do {
            proxy = try Proxy(config: wanted, loopCount: options.proxyThreads, logger: Logger(label: "strait.proxy"))
            return PartChange(part: "proxy", action: .created, detail: "\(wanted.listeners.count) listener(s)")
        } catch {
            return PartChange(part: "proxy", action: .failed, detail: "\(error)")
        }
    }

    /// Starts, changes or removes the lb. A running lb on the same cgroup, with maps large enough,
    /// is changed in place (``LBDaemon/reload(_:)``: only changed services are written, each by one
    /// table flip); a new cgroup or more services than the maps hold replaces it. A first start
    /// adopts the pins an earlier agent left. Lock held.
    private func reconcileLB(_ wanted: LBConfig?) -> PartChange {
        let paths = options.paths
        guard let wanted else {
            guard lb != nil || state.lbCgroup != nil else { return PartChange(part: "lb", action: .unchanged, detail: "not configured") }
            do {
                if let running = lb {
                    lb = nil
                    nonisolated(unsafe) var failure: Error?
                    Self.waitFor {
                        do { try await running.remove() } catch { failure = error }
                    }
                    if let failure { throw failure }
                } else {
                    try paths.lbPersistence.remove()  // left by an earlier agent
                }
                state.lbCgroup = nil
                return PartChange(part: "lb", action: .removed)
            } catch {
                return PartChange(part: "lb", action: .failed, detail: "\(error)")
            }
        }
        var moved = false
        if let running = lb {
            let current = running.currentConfig
            if current.cgroup == wanted.cgroup && running.balancer.capacity >= wanted.services.count {
                if current == wanted { return PartChange(part: "lb", action: .unchanged) }
                do {
                    let changed = try running.reload(wanted)
                    return PartChange(part: "lb", action: .updated, detail: "\(changed) service(s) changed")
                } catch {
                    return PartChange(part: "lb", action: .failed, detail: "\(error); the previous services stay balanced")
                }
            }
            // Another cgroup, or more services than the maps were sized for: start over.
            lb = nil
            Self.waitFor { try? await running.remove() }
            moved = true
        }
        do {
            let daemon = try LBDaemon(
                config: wanted, stateDirectory: paths.lbStateDirectory, pinDirectory: paths.lbDirectory, persistent: true, logger: Logger(label: "strait.lb"))
            lb = daemon
            state.lbCgroup = wanted.cgroup
            let services = "\(wanted.services.count) service(s) on \(wanted.cgroup)"
            if daemon.adopted {
                return daemon.changedAtStart == 0
                    ? PartChange(part: "lb", action: .unchanged, detail: "adopted \(services)")
                    : PartChange(part: "lb", action: .updated, detail: "adopted, \(daemon.changedAtStart) service(s) changed")
            }
            return PartChange(part: "lb", action: moved ? .updated : .created, detail: (moved ? "replaced: " : "") + services)
        } catch {
            return PartChange(part: "lb", action: .failed, detail: "\(error)")
        }
    }

    /// How the lb differs from `wanted` (empty: it matches). Lock held.
    private func lbDifferences(_ wanted: LBConfig?) -> [String] {
        guard let wanted else {
            return state.lbCgroup != nil && options.paths.lbPersistence.exists ? ["lb: balancing, but the file has no lb section"] : []
        }
        guard let lb else { return ["lb: not running"] }
        let current = lb.currentConfig
        var differences: [String] = []
        if current.cgroup != wanted.cgroup {
            differences.append("lb: balancing \(current.cgroup), not \(wanted.cgroup)")
        } else if current != wanted {
            differences.append("lb: the services differ from the file (the last change failed)")
        }
        return differences + lb.balancer.kernelDifferences()
    }

    /// Runs async teardown from the synchronous reconcile (never on a proxy loop thread).
    private static func waitFor(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await body()
            done.signal()
        }
        done.wait()
    }

    static func summary(_ outcome: Outcome) -> String {
        if let rejected = outcome.rejected {
            return "file rejected (\(rejected.problems.count) problem(s)); running state kept"
        }
        let changed = outcome.changes.filter { $0.action != .unchanged }.map(\.description)
        return (outcome.differences.isEmpty ? "in sync" : "not in sync: " + outcome.differences.joined(separator: "; "))
            + (changed.isEmpty ? "" : "; " + changed.joined(separator: "; "))
    }
}
