import Prometheus
import StraitExposition
import StraitKernelABI
import StraitNet
import Synchronization

/// The proxy's metrics, in its own swift-prometheus registry (two proxies in one process, as in
/// tests, never share counters and no global bootstrap is needed). Every metric has a HELP line,
/// every counter ends in `_total`, units are in the names, and labels come only from the
/// configuration (listener, cluster and upstream names, datapaths, fixed kinds), never from
/// clients, so the series count is bounded by the file:
///
/// - `strait_proxy_connections_active{listener}`, `strait_proxy_connections_total{listener}`
/// - `strait_proxy_bytes_total{listener,cluster,upstream,direction,datapath}`, added as bytes move
///   (``addBytes(_:up:down:)``), not only when a connection closes; `direction="upstream"` is
///   client → upstream
/// - `strait_proxy_upstream_up{cluster,upstream}` (1 up, 0 down: active health)
/// - `strait_proxy_upstream_connect_failures_total{cluster,upstream}`,
///   `strait_proxy_upstream_ejections_total{cluster,upstream}` (passive health),
///   `strait_proxy_connect_retries_total{cluster}`
/// - `strait_proxy_upstream_connect_duration_seconds{cluster}` and
///   `strait_proxy_connection_duration_seconds{listener}` (histograms)
/// - `strait_proxy_errors_total{kind}`: connect_failed, connect_timeout, no_upstream, client_reset,
///   upstream_reset, client_gone, idle_timeout, proxy_header_rejected, sockmap_join, failed, …
/// - `strait_proxy_proxy_header_rejected_total{listener,reason}` (`accept_proxy`: malformed,
///   truncated, oversized, timeout)
/// - `strait_proxy_listener_limit_reached_total{listener}`: times a listener stopped accepting at
///   `max_connections` (clients then wait in the listen queue)
/// - `strait_proxy_descriptor_budget_reached_total`: times accepting stopped at the descriptor
///   budget, a reserve under RLIMIT_NOFILE (clients then wait in the listen queue)
/// - `strait_proxy_reloads_total{result="applied"|"rejected"}`,
///   `strait_proxy_last_reload_timestamp_seconds`, `strait_proxy_last_reload_success`
/// - the kernel datapaths' totals, read at each scrape (``recordKernel(_:)``, ``recordEndpoints(_:)``)
///
/// Updating a metric is a registry lookup (one lock) and an atomic add.
public final class ProxyMetrics: Sendable {
    /// The registry every metric above lives in.
    public let registry: PrometheusCollectorRegistry
    private let activeCounts = Mutex<[String: Int]>([:])
    private let kernel = Mutex<strait_proxy_counters?>(nil)
    private let endpoints = Mutex<strait_endpoint_counters?>(nil)
    /// The running configuration's fingerprint and load time, and the last reload (``ProxyStatus``).
    let record = Mutex(ConfigurationRecord())

    /// Buckets of the upstream connect time: 100 µs (loopback) to 5 s (the default timeout).
    static let connectBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5),
    ]
    /// Buckets of a connection's life: 1 ms to 1 h (the default idle timeout).
    static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1), .seconds(10), .seconds(60), .seconds(300), .seconds(1800), .seconds(3600),
    ]

    /// A registry of this proxy's own (one allocation, nothing registered globally), with
    /// `strait_proxy_reloads_total{result}` at 0 for `applied` and `rejected` from the start so a
    /// dashboard sees a zero rather than no series; the other series appear on their first update.
    public init() {
        registry = PrometheusCollectorRegistry()
        // Present from the start, so a dashboard sees 0 rather than no series.
        for result in ["applied", "rejected"] { reloads(result) }
    }

    /// `strait_proxy_<name>_<unit>` with its HELP text.
    private static func name(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "strait", subsystem: "proxy", metricName: name, unitName: unit, helpText: help)
    }

    private func counter(_ name: String, _ help: String, _ labels: [(String, String)]) -> Counter {
        registry.makeCounter(descriptor: Self.name(name, "total", help), labels: labels)
    }

    private func gauge(_ name: String, _ unit: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        registry.makeGauge(descriptor: Self.name(name, unit, help), labels: labels)
    }

    @discardableResult
    private func reloads(_ result: String) -> Counter {
        counter("reloads", "Configuration reloads (SIGHUP or `strait proxy reload`) by result.", [("result", result)])
    }

    /// What one relayed connection's bytes are counted under: names from the configuration only.
    public struct TrafficLabels: Sendable, Hashable {
        /// The listener's name.
        public var listener: String
        /// The cluster's name.
        public var cluster: String
        /// The upstream's configured address, as text.
        public var upstream: String
        /// The datapath the bytes moved on.
        public var datapath: Datapath

        /// The labels of one connection's bytes. The relay passes its listener's, cluster's and
        /// upstream's configured names, never anything from the client, which keeps the series bounded.
        public init(listener: String, cluster: String, upstream: String, datapath: Datapath) {
            self.listener = listener
            self.cluster = cluster
            self.upstream = upstream
            self.datapath = datapath
        }
    }

    /// Adds bytes that moved since the caller's last report: `up` client → upstream, `down` the
    /// other way. The relay calls it about once a second while bytes flow and once at the end, so
    /// a long transfer's rate shows on a dashboard while it runs.
    public func addBytes(_ labels: TrafficLabels, up: UInt64, down: UInt64) {
        let common = [("listener", labels.listener), ("cluster", labels.cluster), ("upstream", labels.upstream)]
        let help = "Bytes relayed, by direction (upstream: client to upstream) and datapath, counted as they move."
        if up > 0 { counter("bytes", help, common + [("direction", "upstream"), ("datapath", labels.datapath.rawValue)]).increment(by: Int64(clamping: up)) }
        if down > 0 { counter("bytes", help, common + [("direction", "downstream"), ("datapath", labels.datapath.rawValue)]).increment(by: Int64(clamping: down)) }
    }

    func connectionOpened(listener: String) {
        counter("connections", "Client connections accepted.", [("listener", listener)]).increment()
        let active = activeCounts.withLock { counts -> Int in
            counts[listener, default: 0] += 1
            return counts[listener]!
        }
        gauge("connections_active", "", "Client connections being relayed now.", [("listener", listener)]).set(to: Double(active))
    }

    /// A connection ended after `duration`; `end` other than completed is counted as an error kind.
    func connectionClosed(listener: String, duration: Duration, end: RelayEnd) {
        let active = activeCounts.withLock { counts -> Int in
            counts[listener, default: 1] -= 1
            return counts[listener]!
        }
        gauge("connections_active", "", "Client connections being relayed now.", [("listener", listener)]).set(to: Double(active))
        registry.makeDurationHistogram(
            descriptor: Self.name("connection_duration", "seconds", "How long client connections lasted, accept to close."),
            labels: [("listener", listener)], buckets: Self.durationBuckets
        ).record(duration)
        if end != .completed { error(end.rawValue) }
    }

    /// A connect to an upstream of `cluster` took `duration`.
    func upstreamConnected(cluster: String, duration: Duration) {
        registry.makeDurationHistogram(
            descriptor: Self.name("upstream_connect_duration", "seconds", "Time from starting a connect to an upstream to its completion."),
            labels: [("cluster", cluster)], buckets: Self.connectBuckets
        ).record(duration)
    }

    /// A connect to `upstream` failed; `ejected`: passive health took it out for a while.
    func connectFailed(cluster: String, upstream: SocketAddress, ejected: Bool) {
        let labels = [("cluster", cluster), ("upstream", "\(upstream)")]
        counter("upstream_connect_failures", "Connects to an upstream that were refused or timed out.", labels).increment()
        if ejected {
            counter("upstream_ejections", "Times passive health ejected an upstream after consecutive connect failures.", labels).increment()
        }
    }

    /// A connection of `cluster` moved on to another upstream after a failed connect.
    func retried(cluster: String) {
        counter("connect_retries", "Connect attempts on another upstream after one failed (`retries`).", [("cluster", cluster)]).increment()
    }

    /// A client of `listener` (`accept_proxy`) was closed before relaying: its PROXY header was
    /// refused for `reason`.
    func proxyHeaderRejected(listener: String, reason: ProxyHeaderReader.Rejection) {
        counter(
            "proxy_header_rejected", Self.proxyHeaderRejectedHelp,
            [("listener", listener), ("reason", reason.rawValue)]
        ).increment()
    }

    /// Creates `listener`'s own counters at 0 (its limit, and with `accept_proxy` each rejection
    /// reason), so a dashboard's `rate()` sees a series before the first event rather than a gap.
    /// The label values come from the config, so the series count stays bounded by it.
    func listenerConfigured(_ listener: ListenerConfig) {
        _ = counter("listener_limit_reached", Self.listenerLimitHelp, [("listener", listener.name)])
        guard listener.acceptProxy != nil else { return }
        for reason in ProxyHeaderReader.Rejection.allCases {
            _ = counter("proxy_header_rejected", Self.proxyHeaderRejectedHelp, [("listener", listener.name), ("reason", reason.rawValue)])
        }
    }

    private static let listenerLimitHelp = "Times a listener reached max_connections and left further clients in the listen queue."
    private static let proxyHeaderRejectedHelp = "Client connections closed because their PROXY protocol header was malformed, truncated, oversized or late (accept_proxy)."

    /// `listener` reached `max_connections` and stopped accepting until a connection ends.
    func listenerLimitReached(listener: String) {
        counter("listener_limit_reached", Self.listenerLimitHelp, [("listener", listener)]).increment()
    }

    /// Accepting stopped on every listener: one more relay could have used descriptors of the
    /// reserve kept under RLIMIT_NOFILE (``DescriptorBudget``).
    func descriptorBudgetReached() {
        counter("descriptor_budget_reached", "Times the proxy stopped accepting because one more connection could have crossed the descriptor reserve kept under RLIMIT_NOFILE; clients wait in the listen queue meanwhile.", []).increment()
    }

    /// Counts one error of `kind` (a fixed word, never client input).
    func error(_ kind: String) {
        counter("errors", "Failures by kind (connect_failed, no_upstream, client_reset, proxy_header_rejected, dns_failed, …).", [("kind", kind)]).increment()
    }

    func upstreamHealth(cluster: String, upstream: String, up: Bool) {
        gauge("upstream_up", "", "1 when active health checks consider the upstream up, 0 when down.", [("cluster", cluster), ("upstream", upstream)]).set(to: up ? 1 : 0)
    }

    /// A reload finished, applied or rejected, at `seconds` (Unix time).
    public func reloaded(applied: Bool, at seconds: Double) {
        reloads(applied ? "applied" : "rejected").increment()
        gauge("last_reload", "timestamp_seconds", "When the last reload finished (Unix time), applied or rejected.", []).set(to: seconds)
        gauge("last_reload_success", "", "1 when the last reload was applied, 0 when it was rejected.", []).set(to: applied ? 1 : 0)
    }

    /// Keeps the sockmap datapath's totals (summed over CPUs) for the next exposition, as
    /// `strait_proxy_sockmap_redirected_bytes_total`, `…_redirected_messages_total`, `…_throttles_total`
    /// and `strait_proxy_sockmap_drops_total{reason="unpaired"|"peer_gone"}`; called before each scrape.
    func recordKernel(_ counters: strait_proxy_counters) { kernel.withLock { $0 = counters } }

    /// Keeps the skmsg datapath's totals for the next exposition, as
    /// `strait_proxy_skmsg_endpoints_tracked`, `strait_proxy_skmsg_redirected_bytes_total`,
    /// `…_redirected_messages_total`, `…_passed_bytes_total` and
    /// `strait_proxy_skmsg_direction_switches_total{to="egress"|"ingress"|"stack"}`; called before each scrape.
    func recordEndpoints(_ counters: strait_endpoint_counters) { endpoints.withLock { $0 = counters } }

    /// The Prometheus text exposition of everything above.
    public func exposition() -> String {
        var text = registry.emitToString()
        var kernelText = PrometheusText()
        if let counters = kernel.withLock({ $0 }) {
            kernelText.counter("strait_proxy_sockmap_redirected_bytes_total", "Bytes the SK_SKB verdict redirected between paired sockets (kernel, all CPUs).", [([], counters.redirected_bytes)])
            kernelText.counter("strait_proxy_sockmap_redirected_messages_total", "Messages the SK_SKB verdict redirected.", [([], counters.redirected_messages)])
            kernelText.counter("strait_proxy_sockmap_throttles_total", "Sockmap directions that went over their in-flight budget and moved to copy.", [([], counters.throttles)])
            kernelText.counter("strait_proxy_sockmap_drops_total", "Messages the verdict dropped: no pair (unpaired) or the peer had left (peer_gone).", [
                ([("reason", "unpaired")], counters.unpaired_drops), ([("reason", "peer_gone")], counters.redirect_failures),
            ])
        }
        if let counters = endpoints.withLock({ $0 }) {
            kernelText.gauge("strait_proxy_skmsg_endpoints_tracked", "Local endpoint sockets the skmsg datapath tracks now.", Double(counters.endpoints_tracked))
            kernelText.counter("strait_proxy_skmsg_redirected_bytes_total", "Bytes local endpoints sent that sk_msg redirected into the proxy's other socket.", [([], counters.redirected_bytes)])
            kernelText.counter("strait_proxy_skmsg_redirected_messages_total", "Messages sk_msg redirected.", [([], counters.redirected_messages)])
            kernelText.counter("strait_proxy_skmsg_passed_bytes_total", "Bytes local endpoints sent on their own connection (not redirected).", [([], counters.passed_bytes)])
            kernelText.counter("strait_proxy_skmsg_direction_switches_total", "skmsg directions that switched stage, by where they went.", [
                ([("to", "egress")], counters.directions_switched), ([("to", "ingress")], counters.directions_to_ingress), ([("to", "stack")], counters.directions_to_stack),
            ])
        }
        text += kernelText.text
        return text
    }
}
