import StraitExposition

extension AccelStatus {
    /// The status in the Prometheus text exposition format (what the node agent's `/metrics`
    /// serves): `strait_accel_enabled`, `strait_accel_sockets_tracked`, and the kernel counters
    /// summed over CPUs as `strait_accel_sockets_total{event}`, `strait_accel_redirected_*_total`
    /// and `strait_accel_fallback_*_total{reason}` (sends that went through the stack instead).
    public func prometheusText() -> String {
        var text = PrometheusText()
        text.gauge("strait_accel_enabled", "1 when acceleration is enabled (its links are pinned).", enabled ? 1 : 0)
        text.gauge("strait_accel_sockets_tracked", "Sockets in the socket hash now.", Double(socketsTracked))
        text.counter("strait_accel_sockets_total", "Established sockets by what sock_ops did with them.", [
            ([("event", "entered")], counters.socketsEntered),
            ([("event", "skipped_by_policy")], counters.socketsSkippedByPolicy),
            ([("event", "released_to_stack")], counters.socketsReleasedToStack),
        ])
        text.counter("strait_accel_redirected_messages_total", "Sends redirected into the peer socket.", counters.redirectedMessages)
        text.counter("strait_accel_redirected_bytes_total", "Bytes redirected into the peer socket.", counters.redirectedBytes)
        let reasons = [("peer_not_tracked", counters.fallbackPeerNotTracked), ("stack", counters.fallbackStack), ("disabled", counters.fallbackDisabled)]
        text.counter("strait_accel_fallback_messages_total", "Sends of tracked sockets that went through TCP/IP, by reason.", reasons.map { ([("reason", $0.0)], $0.1.messages) })
        text.counter("strait_accel_fallback_bytes_total", "Bytes of those sends, by reason.", reasons.map { ([("reason", $0.0)], $0.1.bytes) })
        text.counter("strait_accel_events_dropped_total", "Trace events lost because the ring buffer was full.", counters.eventsDropped)
        return text.text
    }
}
