import StraitNet

/// How one datapath moves a ``Relay``'s bytes once both sockets are connected: the relay keeps the
/// sockets, the phase, the deadlines and the books; a driver keeps only what its datapath needs.
///
/// - ``UserspaceDriver``: copy (a ``LinkBuffer`` per direction), splice (a pipe per direction),
///   and skmsg (copy, with ``SkmsgRoutes`` letting local endpoints send past the proxy);
/// - ``SockmapDriver``: the kernel's SK_SKB verdict moves the bytes; the driver carries each
///   side's FIN and reset across, and copies a direction the verdict throttled.
///
/// A driver calls back into its relay (``Relay/finish(_:)``, ``Relay/resetFrom(_:)``,
/// ``Relay/updateInterests()``, ``Relay/setFastTicks(_:)``) and never closes a socket. Loop thread only.
protocol RelayDriver: AnyObject {
    /// The datapath bytes move on now (never `.auto`).
    var datapath: Datapath { get }
    /// Client → upstream.
    var toUpstream: Direction { get }
    /// Upstream → client.
    var toClient: Direction { get }
    /// One of the relay's sockets (`fd`) is ready for `events`.
    func handle(fd: CInt, events: IOEvents)
    /// The relay's tick (``ProxyTimings/tick``, or ``ProxyTimings/fastTick`` while asked for).
    func tick(now: UInt64)
    /// What `fd` should be polled for now; nil when nothing more can happen on it.
    func interest(of fd: CInt) -> Interest?
    /// The bytes moved so far each way, read while the relay runs (for live byte counters): what
    /// the relay forwarded, or on the kernel datapaths what TCP's counters say reached each sink.
    func movedCounts() -> (up: UInt64, down: UInt64)
    /// The bytes to report each way for a relay ending with `end` (what reached each peer's socket).
    func finalCounts(end: RelayEnd) -> (up: UInt64, down: UInt64)
    /// Frees what the driver holds (pipes, buffers, kernel map entries); the sockets stay the relay's.
    func release()
}
