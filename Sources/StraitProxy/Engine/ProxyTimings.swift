/// Every interval and bound the proxy engine waits by, in one place; configured deadlines
/// (`connect_timeout`, `idle_timeout`, health checks) come from ``ListenerConfig`` and
/// ``HealthCheck`` instead.
///
/// Compared with ``EventLoop/now`` (monotonic nanoseconds) through `wholeNanoseconds`.
struct ProxyTimings: Sendable {
    /// How often a relay looks at its deadlines (connect, idle) and, on sockmap, at the kernel's
    /// counters: its repeating tick.
    var tick: Duration = .milliseconds(100)
    /// The tick while a relay waits on the kernel: a sockmap half-close or reset to carry, a
    /// throttled direction's backlog to drain before copying it.
    var fastTick: Duration = .milliseconds(1)
    /// Longest wait, after one side of a sockmap relay reset, for the bytes it sent before to
    /// reach the other socket before that one is reset too.
    var resetFlush: Duration = .milliseconds(100)
    /// Longest wait for buffered bytes to reach the peers, reading paused, before an `auto` switch
    /// to sockmap gives up and the relay stays where it is (a peer that reads only after it has
    /// written would otherwise wait forever).
    var switchDrain: Duration = .milliseconds(50)
    /// How often bytes the relay never sees (moved by the kernel, or by endpoints' redirects) are
    /// read from counters, so that they count as activity against the idle timeout.
    var activityCheck: Duration = .seconds(1)
    /// How long after a relay starts it looks for endpoints the skmsg programs have not tracked
    /// yet (an upstream server's socket is established a moment after the proxy's connect returns).
    var endpointLookWindow: Duration = .milliseconds(20)
    /// How long accepting on a listener pauses when descriptors or kernel memory run out.
    var acceptBackoff: Duration = .milliseconds(100)
    /// How often a relaying connection adds the bytes it moved to `strait_proxy_bytes_total`, so a
    /// long transfer shows on a dashboard while it runs (one counter read per relay per interval).
    var byteReport: Duration = .seconds(1)
    /// Least time between two debug lines about a throttled direction's backlog.
    var throttleReport: Duration = .seconds(1)

    /// The timings the proxy runs with.
    static let standard = ProxyTimings()
}
