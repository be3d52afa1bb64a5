import Foundation
import StraitBuildInfo
import StraitExposition
import StraitNet
import StraitSystem
import Synchronization

/// What a running proxy is doing, as `GET /status` and `strait proxy status` show it: listeners,
/// clusters, each upstream's state and active connections, the loaded configuration's fingerprint
/// and when it was applied, and the last reload's outcome. A plain value, encoded as JSON.
public struct ProxyStatus: Codable, Sendable, Equatable {
    /// One listener.
    public struct Listener: Codable, Sendable, Equatable {
        /// The listener's `name` in the configuration.
        public var name: String
        /// The bound address (with the kernel's port for port 0).
        public var address: String
        /// The name of the cluster its connections go to.
        public var cluster: String
        /// The configured datapath (`copy`, `splice`, `sockmap`, `skmsg`, `auto`), even when the kernel
        /// datapath is off (``ProxyStatus/sockmapUnavailable``); where connections run is in
        /// ``Upstream/datapaths``.
        public var datapath: String
        /// Connections being relayed now.
        public var active: Int
        /// `max_connections`.
        public var maxConnections: Int
        /// True while the listener has stopped accepting at `max_connections` (further clients
        /// wait in the kernel's listen queue).
        public var atLimit: Bool
        /// `accept_proxy` (`v2`), or nil.
        public var acceptProxy: String?
    }

    /// One upstream's connections on one datapath.
    public struct DatapathShare: Codable, Sendable, Equatable {
        /// Running on it now.
        public var active: Int
        /// That ran on it since the proxy started (an `auto` connection that moved to sockmap
        /// counts under both).
        public var total: Int
    }

    /// One upstream of a cluster.
    public struct Upstream: Codable, Sendable, Equatable {
        /// The numeric address connected to (`198.18.0.10:80`, `[2001:db8::1]:80`).
        public var address: String
        /// The DNS name it was resolved from, if it was given by name.
        public var hostname: String?
        /// Its share of the cluster's new connections relative to the other upstreams (1 to 1000).
        public var weight: Int
        /// True for `backup: true`: it takes connections only while no primary of the cluster is up.
        public var backup: Bool
        /// `up`, `down` (active checks), `ejected` (passive health) or `draining`, in that order of
        /// precedence from last to first: a drained upstream shows `draining` whatever its health.
        public var state: String
        /// Connections to it now (over every cluster naming its address).
        public var active: Int
        /// Passive-health ejections since the proxy started.
        public var ejections: Int
        /// Its connections by the datapath they run on (`copy`, `splice`, `sockmap`, `skmsg`;
        /// never `auto`, whose connections show where they are), only those used so far.
        public var datapaths: [String: DatapathShare]
        /// `auto` connections that moved from a userspace datapath to sockmap.
        public var datapathSwitches: Int
    }

    /// One cluster.
    public struct Cluster: Codable, Sendable, Equatable {
        /// The cluster's `name` in the configuration.
        public var name: String
        /// The `balance` policy as the file writes it: `round_robin`, `least_connections` or
        /// `consistent_hash`.
        public var balance: String
        /// How many other upstreams a connection tries after a connect failure or timeout (0: none).
        public var retries: Int
        /// Its upstreams in the file's order; a DNS name is one entry per address it resolved to.
        public var upstreams: [Upstream]
    }

    /// The last reload through ``ProxyController``, applied or not.
    public struct Reload: Codable, Sendable, Equatable {
        /// True when the file checked and runs now; false when it was rejected or failed to apply, and
        /// the previous configuration kept serving.
        public var applied: Bool
        /// Unix time.
        public var at: Double
        /// The file's mistakes when rejected (`file:line:column: message`), or why it failed to apply.
        public var errors: [String]
    }

    /// The descriptor budget (``DescriptorBudget``): what relays may hold under RLIMIT_NOFILE.
    public struct Descriptors: Codable, Sendable, Equatable {
        /// Descriptors relays may hold together: the soft limit less the reserve and the others open.
        public var capacity: Int
        /// Descriptors the running relays hold.
        public var held: Int
        /// Descriptors kept free under the soft limit, never given to relays.
        public var reserve: Int
        /// Whether accepting waits for relays to end (clients queue in the listen backlog).
        public var full: Bool
    }

    /// The proxy's process id, which changes across `strait proxy restart` (the successor is a new
    /// process).
    public var pid: Int32
    /// The build, as `version (commit …)`: what `strait --version` prints after `strait `.
    public var version: String
    /// Accepting: every listener bound and not draining (what `/readyz` answers).
    public var ready: Bool
    /// ``ProxyConfig/fingerprint``: equal to what `strait proxy --check --json` prints for the
    /// same file, so an operator can tell whether the file on disk is the one running.
    public var configFingerprint: String
    /// When the running configuration was applied (Unix time).
    public var configLoadedAt: Double
    /// The last reload through ``ProxyController`` (SIGHUP or the control socket); nil when there
    /// was none since the start.
    public var lastReload: Reload?
    /// The address the metrics endpoint is bound to (`/metrics`, `/status`, `/healthz`, `/readyz`),
    /// or nil when `metrics:` is not configured.
    public var metrics: String?
    /// Nil when the kernel datapath is available; else why not.
    public var sockmapUnavailable: String?
    /// Nil before the listeners were first applied.
    public var descriptors: Descriptors?
    /// The listeners accepting now. Those a reload removed are not listed, nor any once
    /// ``Proxy/stopAccepting()`` ran (draining), so `ready` is false then.
    public var listeners: [Listener]
    /// Every cluster of the running configuration, in the file's order, with each upstream's state.
    public var clusters: [Cluster]
}

/// How many of one upstream's connections run on each datapath, now and since the start: the
/// relay moves its count when its datapath changes (``Relay/countDatapath()``) and drops it at
/// the end. One lock per change, a few per connection.
final class DatapathMix: Sendable {
    private let counts = Mutex<(shares: [Datapath: ProxyStatus.DatapathShare], switches: Int)>(([:], 0))

    /// A connection now runs on `to`, having run on `from` (nil: it just started relaying);
    /// `correcting`: it never ran on `from`, whose count is taken back rather than a switch.
    func moved(from: Datapath?, to: Datapath, correcting: Bool = false) {
        counts.withLock { counts in
            if let from {
                counts.shares[from]?.active -= 1
                if correcting {
                    counts.shares[from]?.total -= 1
                    if counts.shares[from]?.total == 0 { counts.shares[from] = nil }
                } else {
                    counts.switches += 1
                }
            }
            counts.shares[to, default: ProxyStatus.DatapathShare(active: 0, total: 0)].active += 1
            counts.shares[to]?.total += 1
        }
    }

    /// A connection on `datapath` ended.
    func ended(_ datapath: Datapath) {
        counts.withLock { $0.shares[datapath]?.active -= 1 }
    }

    /// The shares by datapath name, and the switches.
    var snapshot: (shares: [String: ProxyStatus.DatapathShare], switches: Int) {
        counts.withLock { counts in (Dictionary(uniqueKeysWithValues: counts.shares.map { ($0.key.rawValue, $0.value) }), counts.switches) }
    }
}

/// When the running configuration was applied and the last reload's outcome: written by
/// ``Proxy/reload(_:)`` (through ``ProxyMetrics/configurationApplied(_:)``) and
/// ``ProxyController``, read by the status.
struct ConfigurationRecord: Sendable {
    var fingerprint = ""
    var loadedAt: Double = 0
    var lastReload: ProxyStatus.Reload?
}

extension ProxyConfig {
    /// A 64-bit FNV-1a of the configuration's values, in hex: the same for two files that differ
    /// only in comments, spacing or key order, different when any value differs.
    public var fingerprint: String {
        let value = fnv1a(String(reflecting: self).utf8)
        return String(value, radix: 16).leftPadded(to: 16)
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

extension ProxyMetrics {
    /// Records that `config` is now running (``Proxy/reload(_:)``'s last step).
    func configurationApplied(_ config: ProxyConfig) {
        record.withLock {
            $0.fingerprint = config.fingerprint
            $0.loadedAt = Date().timeIntervalSince1970
        }
    }

    /// Records a reload's outcome for the status and counts it.
    func reloadFinished(applied: Bool, errors: [String]) {
        let now = Date().timeIntervalSince1970
        record.withLock { $0.lastReload = ProxyStatus.Reload(applied: applied, at: now, errors: errors) }
        reloaded(applied: applied, at: now)
    }
}

extension Proxy {
    /// The status now. Takes the proxy's state lock once; linear in listeners and upstreams.
    public func status() -> ProxyStatus {
        let snapshot = runtimeSnapshot
        let record = metrics.record.withLock { $0 }
        let now = SocketCall.monotonicNanoseconds()
        let budget = context.descriptors.snapshot
        let listeners = snapshot.listeners.map { runtime in
            let settings = runtime.settings.withLock { $0 }
            return ProxyStatus.Listener(
                name: settings.config.name, address: "\(runtime.address)", cluster: settings.config.cluster,
                datapath: settings.config.datapath.rawValue, active: runtime.active.load(ordering: .relaxed),
                maxConnections: settings.config.maxConnections, atLimit: runtime.atLimit, acceptProxy: settings.config.acceptProxy?.rawValue)
        }
        let clusters = (snapshot.config?.clusters ?? []).map { cluster in
            ProxyStatus.Cluster(
                name: cluster.name, balance: cluster.balancing.rawValue, retries: cluster.retries,
                upstreams: cluster.upstreams.map { upstream in
                    let state = snapshot.upstreams[upstream.address]
                    let mix: (shares: [String: ProxyStatus.DatapathShare], switches: Int) = state?.datapaths.snapshot ?? ([:], 0)
                    return ProxyStatus.Upstream(
                        address: "\(upstream.address)", hostname: upstream.hostname, weight: upstream.weight, backup: upstream.backup,
                        state: state.map { Self.stateName($0, now: now) } ?? "up",
                        active: state?.active.load(ordering: .relaxed) ?? 0,
                        ejections: state?.admission.ejections.load(ordering: .relaxed) ?? 0,
                        datapaths: mix.shares, datapathSwitches: mix.switches)
                })
        }
        return ProxyStatus(
            pid: getpid(), version: BuildInfo.versionLine, ready: !snapshot.draining && !listeners.isEmpty,
            configFingerprint: record.fingerprint, configLoadedAt: record.loadedAt, lastReload: record.lastReload,
            metrics: metricsAddress.map { "\($0)" }, sockmapUnavailable: sockmapUnavailable,
            descriptors: budget.capacity.map { ProxyStatus.Descriptors(capacity: $0, held: budget.held, reserve: budget.reserve, full: budget.full) },
            listeners: listeners, clusters: clusters)
    }

    static func stateName(_ state: UpstreamState, now: UInt64) -> String {
        if state.admission.draining.load(ordering: .relaxed) { return "draining" }
        if state.admission.isEjected(now: now) { return "ejected" }
        return state.healthy.load(ordering: .relaxed) ? "up" : "down"
    }

    /// The upstream states of every configured upstream whose address is `address`, to drain.
    func upstreamState(at address: SocketAddress) -> UpstreamState? { runtimeSnapshot.upstreams[address] }

    /// The routes of the metrics address: `/metrics` (the proxy's series, `strait_build_info`,
    /// `process_*`), `/status` (JSON), `/healthz` (200 while the process serves) and `/readyz`
    /// (200 while accepting, 503 while draining or with no listener). Paths match exactly.
    func observabilityRoutes() -> [String: @Sendable () -> PlainHTTPEndpoint.Response] {
        [
            "/metrics": { [weak self] in
                guard let self else { return .init(status: 503, body: "stopping\n") }
                return .init(body: self.metricsText() + Self.buildInfoText + ProcessMetrics.exposition())
            },
            "/status": { [weak self] in
                guard let self, let body = try? Self.statusEncoder.encode(self.status()) else { return .init(status: 503, body: "stopping\n") }
                return .init(body: String(decoding: body, as: UTF8.self) + "\n", contentType: "application/json")
            },
            "/healthz": { .init(body: "ok\n", contentType: "text/plain; charset=utf-8") },
            "/readyz": { [weak self] in
                guard let self, self.status().ready else { return .init(status: 503, body: "not ready: draining or not listening\n", contentType: "text/plain; charset=utf-8") }
                return .init(body: "ready\n", contentType: "text/plain; charset=utf-8")
            },
        ]
    }

    /// JSON with sorted keys, so two statuses compare line by line.
    static let statusEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return encoder
    }()

    /// `strait_build_info{version,commit} 1`.
    static let buildInfoText: String = {
        var text = PrometheusText()
        text.gauge("strait_build_info", "The running Strait build (always 1).", [([("version", BuildInfo.version), ("commit", BuildInfo.commit)], 1)])
        return text.text
    }()

    /// An endpoint serving ``observabilityRoutes()`` at `address` (or on `listener`, a
    /// predecessor's socket bound there); refused requests are counted as errors.
    func makeObservabilityEndpoint(_ address: SocketAddress, listener: Listener?) throws(SystemCallError) -> PlainHTTPEndpoint {
        let metrics = self.metrics
        return try PlainHTTPEndpoint(
            address: address, listener: listener, group: group, routes: observabilityRoutes(),
            refused: { refusal in
                // A request larger than the bound, or a client too slow to send one, is closed.
                metrics.error(refusal == .tooLarge ? "metrics_request_too_large" : "metrics_request_timeout")
            })
    }
}
