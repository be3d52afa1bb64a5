extension AccelStatus {
    /// The status in the Prometheus text exposition format (what the node agent's `/metrics`
    /// serves): `strait_accel_enabled`, `strait_accel_sockets_tracked`, and the kernel counters
    /// summed over CPUs as `strait_accel_sockets_total{event}`, `strait_accel_redirected_*_total`
    /// and `strait_accel_fallback_*_total{reason}` (sends that went through the stack instead).
    public func prometheusText() -> String {
        var lines: [String] = []
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: UInt64)]) {
            lines += ["# HELP \(name) \(help)", "# TYPE \(name) \(type)"]
            lines += samples.map { "\(name)\($0.labels.isEmpty ? "" : "{\($0.labels)}") \($0.value)" }
        }
        family("strait_accel_enabled", "gauge", "1 when acceleration is enabled (its links are pinned).", [("", enabled ? 1 : 0)])
        family("strait_accel_sockets_tracked", "gauge", "Sockets in the socket hash now.", [("", UInt64(socketsTracked))])
        family("strait_accel_sockets_total", "counter", "Established sockets by what sock_ops did with them.", [
            ("event=\"entered\"", counters.socketsEntered),
            ("event=\"skipped_by_policy\"", counters.socketsSkippedByPolicy),
            ("event=\"released_to_stack\"", counters.socketsReleasedToStack),
        ])
        family("strait_accel_redirected_messages_total", "counter", "Sends redirected into the peer socket.", [("", counters.redirectedMessages)])
        family("strait_accel_redirected_bytes_total", "counter", "Bytes redirected into the peer socket.", [("", counters.redirectedBytes)])
        let reasons = [("peer_not_tracked", counters.fallbackPeerNotTracked), ("stack", counters.fallbackStack), ("disabled", counters.fallbackDisabled)]
        family("strait_accel_fallback_messages_total", "counter", "Sends of tracked sockets that went through TCP/IP, by reason.", reasons.map { ("reason=\"\($0.0)\"", $0.1.messages) })
        family("strait_accel_fallback_bytes_total", "counter", "Bytes of those sends, by reason.", reasons.map { ("reason=\"\($0.0)\"", $0.1.bytes) })
        family("strait_accel_events_dropped_total", "counter", "Trace events lost because the ring buffer was full.", [("", counters.eventsDropped)])
        return lines.joined(separator: "\n") + "\n"
    }
}
