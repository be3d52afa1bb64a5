import Prometheus

/// The agent's own series, in its own swift-prometheus registry (two agents in one test process
/// never share them):
///
/// - `strait_build_info{version}` 1
/// - `strait_agent_reconciles_total{part,action}`: what each reconcile did to each part
///   (`unchanged`, `created`, `updated`, `removed`, `failed`)
/// - `strait_agent_reloads_total{result}`: `applied` or `rejected` (the file did not check)
/// - `strait_agent_in_sync`: 1 when the kernel matched the file at the last check
/// - `strait_agent_last_reconcile_timestamp_seconds`
///
/// The parts' own counters (accel, drop, lb, proxy) are read from the kernel and the proxy at each
/// scrape and appended by ``Agent/metricsText()``.
final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let inSync: Gauge
    private let lastReconcile: Gauge

    init(version: String) {
        registry.makeGauge(descriptor: Self.name("build", unit: "info", subsystem: nil, "The running Strait build (always 1)."), labels: [("version", version)]).set(to: 1.0)
        inSync = registry.makeGauge(descriptor: Self.name("in_sync", unit: "", "1 when the kernel state matched the agent file at the last check."))
        lastReconcile = registry.makeGauge(descriptor: Self.name("last_reconcile_timestamp", unit: "seconds", "When the agent last reconciled (Unix time)."))
    }

    func reconciled(_ changes: [PartChange], at seconds: Double) {
        for change in changes {
            registry.makeCounter(descriptor: Self.name("reconciles", unit: "total", "Reconciles by part and what they did."), labels: [("part", change.part), ("action", change.action.rawValue)]).increment()
        }
        lastReconcile.set(to: seconds)
    }

    func reload(applied: Bool) {
        registry.makeCounter(descriptor: Self.name("reloads", unit: "total", "Reloads (SIGHUP, file change) by result."), labels: [("result", applied ? "applied" : "rejected")]).increment()
    }

    /// `strait_<subsystem>_<name>_<unit>`, with its help line.
    private static func name(_ name: String, unit: String, subsystem: String? = "agent", _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "strait", subsystem: subsystem, metricName: name, unitName: unit, helpText: help)
    }

    func setInSync(_ value: Bool) { inSync.set(to: value ? 1.0 : 0.0) }

    func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
