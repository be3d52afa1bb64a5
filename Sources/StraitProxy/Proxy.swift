import Foundation
import Dispatch
import Logging
import StraitBPF
import StraitKernelABI
import StraitNet
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An L4 TCP proxy: listeners accept clients, a cluster's balancer picks an upstream, and a
/// ``Relay`` moves the bytes on the listener's ``Datapath`` until both sides have finished.
///
/// Runs on one StraitNet ``EventLoopGroup`` of `loopCount` loops, which it owns: every listener
/// socket is polled by every loop (`EPOLLEXCLUSIVE`, so one wakes per connection) and a relay stays
/// on the loop that accepted it (``RelayLoop``). Loop 0 also runs the health checks, and `/metrics`
/// is served on the same loops. ``reload(_:)`` swaps the configuration without touching
/// established relays; ``shutdown(drainTimeout:)`` stops accepting, waits for relays to finish, then
/// closes what is left.
///
/// The kernel datapath needs `CAP_BPF` + `CAP_NET_ADMIN`; without them (or when `kernelDatapath`
/// is false) the proxy runs `sockmap` listeners on splice and `auto` on its starting datapath, and
/// ``sockmapUnavailable`` says why (logged once at start).
public final class Proxy: @unchecked Sendable {
    /// This proxy's metrics, in a registry the proxy creates and owns (never shared with another
    /// proxy in the process); ``metricsText()`` renders it, with the kernel totals read first.
    public let metrics: ProxyMetrics
    /// Where the proxy logs its own events (kernel datapath off, upstream up or down, configuration
    /// applied) and where its relays log; the caller's, given to ``init``.
    public let logger: Logger
    let context: ProxyContext
    /// The loops every relay, acceptor, health check and the metrics endpoint run on.
    let group: EventLoopGroup
    private let relayLoops: [RelayLoop]
    private let health: HealthChecker<UpstreamState>
    private let state = Mutex<State>(State())
    var metricsServer: PlainHTTPEndpoint?  // internal, so ProxyController can move it on reload

    private struct State: ~Copyable {
        var config: ProxyConfig?
        var listeners: [ListenerRuntime] = []
        var upstreams: [SocketAddress: UpstreamState] = [:]
        /// Listeners no longer accepting (removed by a reload, or draining) whose relays may run on.
        var retired: [ListenerRuntime] = []
        var draining = false
        /// Listening sockets handed over by the previous process, used instead of binding anew;
        /// owned here until a listener takes one, the rest closed at the end of ``init``.
        var inherited = InheritedSockets()
    }

    // what the status (Observe/ProxyStatus.swift) and `strait proxy drain` read.
    var runtimeSnapshot: (listeners: [ListenerRuntime], upstreams: [SocketAddress: UpstreamState], config: ProxyConfig?, draining: Bool) {
        state.withLock { ($0.listeners, $0.upstreams, $0.config, $0.draining) }
    }

    /// Why the kernel datapath is off, or nil when it is on.
    public var sockmapUnavailable: String? { context.sockmapUnavailable }

    /// The skmsg datapath's kernel totals (endpoints tracked, directions switched, bytes redirected),
    /// or nil when no endpoints cgroup is configured.
    public var skmsgCounters: strait_endpoint_counters? { context.endpoints?.counters() }

    /// Binds every listener and starts. Throws ``ProxyError/bind(listener:address:_:)`` if a listener's
    /// address is taken.
    ///
    /// `inheriting` holds listening sockets taken from the previous proxy in a restart (see
    /// `ListenerHandOver`): a listener whose address is among them accepts on that same socket, so
    /// its queue carries over; the metrics endpoint serves on the previous one's listener when the
    /// configured metrics address is the one it is bound to. The proxy owns them from here on and
    /// closes, before `init` returns, any it does not use.
    public init(
        config: ProxyConfig, loopCount: Int = 2, kernelDatapath: Bool = true, inheriting inherited: consuming InheritedSockets = InheritedSockets(),
        logger: Logger = Logger(label: "strait.proxy")
    ) throws(ProxyError) {
        SocketCall.ignoreBrokenPipe()
        self.logger = logger
        metrics = ProxyMetrics()
        var forwarder: SockmapForwarder?
        var unavailable: String?
        if !kernelDatapath {
            unavailable = "disabled by the caller"
        } else if let missing = Self.missingCapabilities() {
            // Checked first so the user reads one plain sentence, not libbpf's load errors.
            unavailable = "the process lacks \(missing) (run as root, or grant CAP_BPF and CAP_NET_ADMIN)"
        } else {
            do {
                forwarder = try SockmapForwarder()
            } catch {
                unavailable = "the kernel refused the SK_SKB programs: \(error)"
            }
        }
        var endpoints: EndpointForwarder?
        if let path = config.endpointsCgroup {
            if let unavailable {
                logger.warning("skmsg datapath off: \(unavailable); skmsg listeners run on copy")
            } else {
                let cgroup = Cgroup(path: path)
                guard cgroup.exists else { throw .endpointsCgroupMissing(path: path, mount: Cgroup.v2MountPoint()) }
                do {
                    endpoints = try EndpointForwarder(cgroup: cgroup)
                } catch {
                    throw .sockmap(error)
                }
            }
        } else if config.listeners.contains(where: { $0.datapath == .skmsg }) {
            logger.warning("skmsg datapath off: no `endpoints_cgroup` is configured (the cgroup v2 directory of the local clients and servers); skmsg listeners run on copy")
        }
        // The access log's writer thread (and file, with `access_log_file`).
        let accessLogWriter: AccessLog
        do { accessLogWriter = try AccessLog(path: config.accessLogFile, logger: logger, metrics: metrics) } catch {
            endpoints?.detach()
            throw .system(error)
        }
        let context = ProxyContext(forwarder: forwarder, sockmapUnavailable: unavailable, endpoints: endpoints, metrics: metrics, logger: logger, accessLogWriter: accessLogWriter)
        self.context = context
        let group: EventLoopGroup
        do { group = try EventLoopGroup(loopCount: max(1, loopCount)) } catch {
            accessLogWriter.stop()
            endpoints?.detach()
            throw .system(error)
        }
        self.group = group
        relayLoops = group.loops.map { RelayLoop(loop: $0, context: context) }
        let metrics = self.metrics
        health = HealthChecker(loop: group.loops[0]) { [metrics, logger] change in
            let upstream = change.target.key
            upstream.healthy.store(change.up, ordering: .relaxed)
            metrics.upstreamHealth(cluster: change.target.group, upstream: "\(upstream.address)", up: change.up)
            logger.notice("upstream \(change.up ? "up" : "down")", metadata: ["cluster": "\(change.target.group)", "upstream": "\(upstream.address)"])
        }
        if let unavailable, config.listeners.contains(where: { $0.datapath == .sockmap || $0.datapath == .auto }) {
            logger.warning("sockmap datapath off: \(unavailable); sockmap listeners run on splice, auto ones stay on \(AutoRule.startDatapath)")
        }
        let inheritedMetrics = inherited.takeMetrics()
        state.withLock { swap(&$0.inherited, &inherited) }
        // The inherited sockets no listener took are closed (with the value they are in).
        defer { state.withLock { $0.inherited = InheritedSockets() } }
        do {
            try reload(config)
        } catch {
            stopLoops()
            throw error
        }
        if let address = config.metricsAddress {
            do { try startMetricsServer(address, inheriting: inheritedMetrics) } catch {
                abandon()
                throw error
            }
        }
    }

    /// The capabilities the kernel datapath needs that this process's effective set lacks
    /// (`CAP_BPF`, or `CAP_SYS_ADMIN` before 5.8, and `CAP_NET_ADMIN`), or nil when it has them.
    static func missingCapabilities() -> String? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return nil }
        let bpf = mask & (1 << 39) != 0 || mask & (1 << 21) != 0  // CAP_BPF or CAP_SYS_ADMIN
        let netAdmin = mask & (1 << 12) != 0
        let missing = (bpf ? [] : ["CAP_BPF"]) + (netAdmin ? [] : ["CAP_NET_ADMIN"])
        return missing.isEmpty ? nil : missing.joined(separator: " and ")
    }

    /// The address each listener is bound to, by listener name (with the kernel's port for port 0).
    public var listenerAddresses: [String: SocketAddress] {
        state.withLock { state in
            Dictionary(uniqueKeysWithValues: state.listeners.map { ($0.name, $0.address) })
        }
    }

    /// Connections being relayed now, over all listeners.
    public var activeConnections: Int {
        state.withLock { state in
            (state.listeners + state.retired).reduce(0) { $0 + $1.active.load(ordering: .relaxed) }
        }
    }

    /// Reads, checks and applies the configuration file at `path` (SIGHUP's reload): any mistake in
    /// the file, however hostile, throws and leaves the running configuration serving. Returns
    /// what it applied.
    @discardableResult
    public func reload(fromFile path: String) throws(ProxyError) -> ProxyConfig {
        let next: ProxyConfig
        do { next = try ProxyConfigLoader.load(path: path) } catch { throw .config(error) }
        try reload(next)
        return next
    }

    /// Applies a configuration (from any thread but a proxy loop's): listeners with the same address keep their socket (no refused
    /// connections), new ones are bound, removed ones stop accepting; established relays keep the
    /// settings they started with. Throws without changing anything if a new address cannot be bound.
    /// Throws ``ProxyError/invalid(_:)`` for a configuration that fails ``ProxyConfig/validate(dualStack:)``.
    public func reload(_ config: ProxyConfig) throws(ProxyError) {
        do { try config.validate() } catch { throw .invalid(error) }
        var clusters: [String: ClusterRuntime] = [:]
        let (bound, kept, removed): ([ListenerRuntime], [ListenerRuntime], [ListenerRuntime]) = try state.withLock { state throws(ProxyError) in
            for cluster in config.clusters {
                let states = cluster.upstreams.map { upstream in
                    if let existing = state.upstreams[upstream.address] { return existing }
                    let created = UpstreamState(address: upstream.address)
                    state.upstreams[upstream.address] = created
                    return created
                }
                clusters[cluster.name] = ClusterRuntime(config: cluster, states: states)
            }
            var next: [ListenerRuntime] = []
            var bound: [ListenerRuntime] = []
            var kept: [ListenerRuntime] = []
            // By address, so a reload is linear in the listener count (addresses are unique: validate()).
            var reusable = Dictionary(state.listeners.filter { $0.address.port != 0 }.map { ($0.address, $0) }, uniquingKeysWith: { first, _ in first })
            for (index, listener) in config.listeners.enumerated() {
                guard let cluster = clusters[listener.cluster] else {
                    // validate() refuses this already; kept so a listener never runs without one.
                    for runtime in bound { closeDescriptor(runtime.fd) }
                    throw .invalid(ProxyConfigProblem(.listener(index, field: "cluster"), "listener \(listener.name) names unknown cluster \(listener.cluster)"))
                }
                let settings = ListenerSettings(config: listener, cluster: cluster)
                if listener.address.port != 0, let existing = reusable.removeValue(forKey: listener.address) {
                    existing.settings.withLock { $0 = settings }
                    existing.wakeSlotWaiters()  // a raised `max_connections` applies to clients already queued
                    kept.append(existing)
                    next.append(existing)
                    continue
                }
                if let inherited = state.inherited.takeListener(at: listener.address) {
                    let runtime = ListenerRuntime(fd: inherited.take(), address: listener.address, settings: settings)
                    bound.append(runtime)
                    next.append(runtime)
                    continue
                }
                do throws(SystemCallError) {
                    let socket = try Listener.tcp(listener.address, backlog: 4096)
                    let runtime = ListenerRuntime(fd: socket.fd, address: socket.address, settings: settings)
                    bound.append(runtime)
                    next.append(runtime)
                } catch {
                    for runtime in bound { closeDescriptor(runtime.fd) }
                    throw .bind(listener: listener.name, address: "\(listener.address)", error)
                }
            }
            let nextIdentities = Set(next.map(ObjectIdentifier.init))
            let removed = state.listeners.filter { !nextIdentities.contains(ObjectIdentifier($0)) }
            state.retired += removed
            state.listeners = next
            state.config = config
            return (bound, kept, removed)
        }
        context.accessLog.store(config.accessLog, ordering: .relaxed)
        for listener in config.listeners { metrics.listenerConfigured(listener) }
        if let endpoints = context.endpoints {
            if config.endpointsCgroup != endpoints.cgroup.path {
                logger.warning("`endpoints_cgroup` changed to \(config.endpointsCgroup ?? "none"); it applies at the next start (`strait proxy restart`), \(endpoints.cgroup.path) stays until then")
            }
            do {
                // Only listeners that may use skmsg: a tracked socket gets the kernel's sockmap receive
                // path, whose blocking reads can return EAGAIN (README, limitations).
                let routed = config.listeners.filter { $0.datapath == .skmsg || $0.datapath == .auto }
                let clusters = Set(routed.map(\.cluster))
                try endpoints.mark(
                    listeners: (kept + bound).filter { runtime in routed.contains { $0.name == runtime.name } }.map(\.address),
                    upstreams: config.clusters.filter { clusters.contains($0.name) }.flatMap { $0.upstreams.map(\.address) })
            } catch {
                logger.warning("skmsg datapath: cannot update the endpoint filter: \(error)")
            }
        }
        // With the new listeners open, before they accept.
        if let budget = context.descriptors.measure(), budget.capacity < 16 * DescriptorBudget.descriptors(for: .splice) {
            logger.warning("RLIMIT_NOFILE \(budget.limit) leaves descriptors for \(budget.capacity / DescriptorBudget.descriptors(for: .splice)) splice or \(budget.capacity / DescriptorBudget.descriptors(for: .copy)) copy connections at once beyond the \(budget.reserve) kept in reserve; further clients wait in the listen queue: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)")
        }
        for runtime in bound {
            for relayLoop in relayLoops { onLoop(relayLoop) { $0.startAccepting(runtime) } }
        }
        close(removed)
        configureHealthChecks(Array(clusters.values))
        metrics.configurationApplied(config)  // the status's fingerprint and load time
        logger.info("configuration applied", metadata: [
            "listeners": "\(config.listeners.count)", "new": "\(bound.count)", "kept": "\(kept.count)", "removed": "\(removed.count)",
        ])
    }

    /// Checks the members of `clusters` that have a health check; the others count as up.
    private func configureHealthChecks(_ clusters: [ClusterRuntime]) {
        var targets: [HealthChecker<UpstreamState>.Target] = []
        var checked = Set<UpstreamState>()
        for cluster in clusters {
            guard let check = cluster.config.healthCheck else { continue }
            for member in cluster.members where checked.insert(member).inserted {
                targets.append(.init(key: member, address: member.address, check: check, group: cluster.config.name))
            }
        }
        for cluster in clusters where cluster.config.healthCheck == nil {
            for member in cluster.members where !checked.contains(member) { member.healthy.store(true, ordering: .relaxed) }
        }
        health.configure(targets)
        for target in targets {
            metrics.upstreamHealth(cluster: target.group, upstream: "\(target.address)", up: target.key.healthy.load(ordering: .relaxed))
        }
    }

    /// Takes `listeners` off every loop, then closes their sockets (their relays go on).
    private func close(_ listeners: [ListenerRuntime]) {
        for runtime in listeners {
            runtime.closed.store(true, ordering: .relaxed)
            for relayLoop in relayLoops { onLoop(relayLoop) { $0.stopAccepting(runtime) } }
            closeDescriptor(runtime.fd)
        }
    }

    /// Runs `body` on `relayLoop`'s thread and waits for it. Never from a loop thread.
    private func onLoop(_ relayLoop: RelayLoop, _ body: @escaping @Sendable (RelayLoop) -> Void) {
        let done = DispatchSemaphore(value: 0)
        relayLoop.loop.execute {
            body(relayLoop)
            done.signal()
        }
        done.wait()
    }

    /// Stops accepting, waits up to `drainTimeout` for relays to finish on their own, then closes
    /// the rest and stops every thread. Call once.
    public func shutdown(drainTimeout: Duration) async {
        stopAccepting()
        if let metricsServer {
            await metricsServer.shutdown()
            self.metricsServer = nil
        }
        let deadline = ContinuousClock.now + drainTimeout
        while activeConnections > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        for relayLoop in relayLoops { onLoop(relayLoop) { $0.finishAllRelays(.shutdown) } }
        stopLoops()
    }

    /// Stops accepting: every listener leaves the loops and this process closes its socket (a
    /// successor that took the same sockets keeps accepting on them). Established relays go on.
    /// Calling it again does nothing.
    public func stopAccepting() {
        metricsServer?.server.stopAccepting()
        let listeners = state.withLock { state -> [ListenerRuntime] in
            state.draining = true
            defer {
                state.retired += state.listeners
                state.listeners = []
            }
            return state.listeners
        }
        close(listeners)
    }

    /// The listening sockets and their addresses, to hand to a successor in a restart. They stay
    /// this proxy's until ``stopAccepting()``.
    public var listenerSockets: [(address: SocketAddress, fd: CInt)] {
        state.withLock { $0.listeners.map { ($0.address, $0.fd) } }
    }

    /// The metrics endpoint's listening socket, to hand to a successor with the listeners (so it
    /// never has to bind an address this process still holds). Stays this proxy's.
    public var metricsSocket: (address: SocketAddress, fd: CInt)? {
        guard let server = metricsServer?.server, let fd = server.listenerDescriptors.first else { return nil }
        return (server.address, fd)
    }

    /// Undoes a start that failed half-way: listeners closed, threads stopped.
    private func abandon() {
        let listeners = state.withLock { state -> [ListenerRuntime] in
            defer { state.listeners = [] }
            return state.listeners
        }
        close(listeners)
        stopLoops()
    }

    /// Stops the loops, then detaches the skmsg programs from the endpoints cgroup: from here on no
    /// socket there is tracked, whoever still holds this proxy.
    private func stopLoops() {
        health.stop()
        group.shutdown()
        context.endpoints?.detach()
        context.accessLogWriter.stop()  // what is queued is written
    }

    /// Every proxy metric in the Prometheus text format, with the kernel datapaths' totals read
    /// first (a few map lookups). What `GET /metrics` serves, here or in the node agent's endpoint.
    public func metricsText() -> String {
        if let forwarder = context.forwarder { metrics.recordKernel(forwarder.counters()) }
        if let endpoints = context.endpoints { metrics.recordEndpoints(endpoints.counters()) }
        return metrics.exposition()
    }

    /// Serves `/metrics` at `address`, on `inherited` (a predecessor's listener) when it is bound
    /// there; closes `inherited` otherwise.
    private func startMetricsServer(_ address: SocketAddress, inheriting inherited: consuming OwnedDescriptor?) throws(ProxyError) {
        var adopted: Listener?
        if let socket = inherited.take(), let listener = try? Listener.adopt(socket) {
            if Self.sameEndpoint(listener.address, address) { adopted = listener } else { listener.close() }
        }
        do {
            let endpoint = try makeObservabilityEndpoint(address, listener: adopted)  // /metrics, /status, /healthz, /readyz
            metricsServer = endpoint
            logger.info("metrics on http://\(endpoint.address)/metrics")
        } catch {
            throw .system(error)
        }
    }

    /// Whether a socket bound to `bound` serves `configured` (port 0 asks for any port: the one
    /// the predecessor was given stays).
    static func sameEndpoint(_ bound: SocketAddress, _ configured: SocketAddress) -> Bool {
        bound == configured || configured.port == 0
    }

    /// The bound address of the metrics endpoint, if one runs.
    public var metricsAddress: SocketAddress? { metricsServer?.address }
}
