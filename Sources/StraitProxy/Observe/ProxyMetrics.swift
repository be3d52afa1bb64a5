import Metrics
import StraitKernelABI
import Prometheus
import Synchronization

/// The proxy's metrics, through swift-metrics into its own Prometheus registry (so two proxies in
/// one process, as in tests, never share counters and no global bootstrap is needed):
///
/// - `strait_proxy_connections_active{listener}` and `strait_proxy_connections_total{listener}`
/// - `strait_proxy_bytes_total{direction="upstream"|"downstream",datapath}`
/// - `strait_proxy_upstream_up{cluster,upstream}` (1 up, 0 down)
/// - `strait_proxy_errors_total{kind}`: connect_failed, connect_timeout, no_upstream,
///   client_reset, upstream_reset, client_gone, idle_timeout, limit, sockmap_join, failed
///
/// Metric objects are created once per label set and cached; updating one is an atomic add.
public final class ProxyMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let counters = Mutex<[String: CoreMetrics.Counter]>([:])
    private let gauges = Mutex<[String: CoreMetrics.Gauge]>([:])
    private let activeCounts = Mutex<[String: Int]>([:])

    public init() {
        registry = PrometheusCollectorRegistry()
        factory = PrometheusMetricsFactory(registry: registry)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Counter {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return counters.withLock { cache in
            if let existing = cache[key] { return existing }
            let created = CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = created
            return created
        }
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Gauge {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return gauges.withLock { cache in
            if let existing = cache[key] { return existing }
            let created = CoreMetrics.Gauge(label: label, dimensions: dimensions, factory: factory)
            cache[key] = created
            return created
        }
    }

    func connectionOpened(listener: String) {
        counter("strait_proxy_connections_total", [("listener", listener)]).increment()
        let active = activeCounts.withLock { counts -> Int in
            counts[listener, default: 0] += 1
            return counts[listener]!
        }
        gauge("strait_proxy_connections_active", [("listener", listener)]).record(active)
    }

    func connectionClosed(listener: String, datapath: Datapath, bytesUp: UInt64, bytesDown: UInt64, end: RelayEnd) {
        let active = activeCounts.withLock { counts -> Int in
            counts[listener, default: 1] -= 1
            return counts[listener]!
        }
        gauge("strait_proxy_connections_active", [("listener", listener)]).record(active)
        counter("strait_proxy_bytes_total", [("direction", "upstream"), ("datapath", datapath.rawValue)]).increment(by: Int64(clamping: bytesUp))
        counter("strait_proxy_bytes_total", [("direction", "downstream"), ("datapath", datapath.rawValue)]).increment(by: Int64(clamping: bytesDown))
        if end != .completed { error(end.rawValue) }
    }

    func error(_ kind: String) {
        counter("strait_proxy_errors_total", [("kind", kind)]).increment()
    }

    func upstreamHealth(cluster: String, upstream: String, up: Bool) {
        gauge("strait_proxy_upstream_up", [("cluster", cluster), ("upstream", upstream)]).record(up ? 1 : 0)
    }

    /// Copies the kernel datapath's totals (summed over CPUs) into
    /// `strait_proxy_sockmap_redirected_bytes`, `strait_proxy_sockmap_redirected_messages` and
    /// `strait_proxy_sockmap_drops{reason="unpaired"|"peer_gone"}`; called before each scrape.
    func recordKernel(_ counters: strait_proxy_counters) {
        gauge("strait_proxy_sockmap_redirected_bytes", []).record(Double(counters.redirected_bytes))
        gauge("strait_proxy_sockmap_redirected_messages", []).record(Double(counters.redirected_messages))
        gauge("strait_proxy_sockmap_drops", [("reason", "unpaired")]).record(Double(counters.unpaired_drops))
        gauge("strait_proxy_sockmap_drops", [("reason", "peer_gone")]).record(Double(counters.redirect_failures))
    }

    /// Copies the skmsg datapath's totals into `strait_proxy_skmsg_endpoints_tracked`,
    /// `strait_proxy_skmsg_redirected_bytes`, `strait_proxy_skmsg_redirected_messages`,
    /// `strait_proxy_skmsg_passed_bytes` and `strait_proxy_skmsg_directions{to="egress"|"ingress"|"stack"}`
    /// (directions that switched); called before each scrape.
    func recordEndpoints(_ counters: strait_endpoint_counters) {
        gauge("strait_proxy_skmsg_endpoints_tracked", []).record(Double(counters.endpoints_tracked))
        gauge("strait_proxy_skmsg_redirected_bytes", []).record(Double(counters.redirected_bytes))
        gauge("strait_proxy_skmsg_redirected_messages", []).record(Double(counters.redirected_messages))
        gauge("strait_proxy_skmsg_passed_bytes", []).record(Double(counters.passed_bytes))
        gauge("strait_proxy_skmsg_directions", [("to", "egress")]).record(Double(counters.directions_switched))
        gauge("strait_proxy_skmsg_directions", [("to", "ingress")]).record(Double(counters.directions_to_ingress))
        gauge("strait_proxy_skmsg_directions", [("to", "stack")]).record(Double(counters.directions_to_stack))
    }

    /// The Prometheus text exposition of everything above.
    public func exposition() -> String { registry.emitToString() }
}
