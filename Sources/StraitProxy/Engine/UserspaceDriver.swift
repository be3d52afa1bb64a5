import StraitNet
import StraitSystem

/// The userspace datapaths: copy (``Direction/Mode/copy(_:)``, a ``LinkBuffer`` each way), splice
/// (``Direction/Mode/splice(_:)``, a pipe each way), and skmsg, which is
/// copy plus ``SkmsgRoutes`` (local endpoints then send straight into the proxy's sockets, and
/// the relay copies only what still arrives on them).
///
/// Sockets are polled level-triggered: a side for input only while its direction has room, for
/// output only while bytes wait. It also runs `auto`'s first phase: after ``AutoRule/sampleReads``
/// reads it may ask to move to sockmap; reading then pauses until both directions are empty
/// (at most ``ProxyTimings/switchDrain``) and the relay hands the sockets to ``SockmapDriver``.
/// Loop thread only.
final class UserspaceDriver: RelayDriver {
    unowned let relay: Relay
    private(set) var datapath: Datapath
    let toUpstream: Direction
    let toClient: Direction
    /// The skmsg routes, while this relay may use that datapath.
    private var routes: SkmsgRoutes?
    /// `auto` has not decided yet.
    private var autoPending: Bool
    /// When `auto` asked to move to sockmap (reading paused until the buffers empty), or nil.
    private var switchRequestedAt: UInt64?

    /// Sets up the directions of `datapath` (`.auto` starts on ``AutoRule/startDatapath``).
    /// Throws when a pipe cannot be made.
    init(relay: Relay, datapath requested: Datapath) throws(SystemCallError) {
        self.relay = relay
        autoPending = requested == .auto
        datapath = requested == .auto ? AutoRule.startDatapath : requested
        let client = relay.client
        let upstream = relay.upstream
        switch datapath {
        case .splice:
            // Each pipe is owned by its direction; the first closes by itself if the second fails.
            toUpstream = Direction(source: client, sink: upstream, mode: .splice(SplicePipe(try RelayCall.pipe())))
            toClient = Direction(source: upstream, sink: client, mode: .splice(SplicePipe(try RelayCall.pipe())))
        default:
            toUpstream = Direction(source: client, sink: upstream, mode: .copy(LinkBuffer()))
            toClient = Direction(source: upstream, sink: client, mode: .copy(LinkBuffer()))
        }
    }

    /// Arms the skmsg routes where they apply, then moves what is already there.
    func begin() {
        if let endpoints = relay.context.endpoints, datapath == .skmsg || autoPending {
            routes = SkmsgRoutes.arm(relay: relay, endpoints: endpoints, up: toUpstream, down: toClient)
            settleAuto()
        }
        pumpAll()
    }

    /// `auto` with a local endpoint is skmsg for good.
    private func settleAuto() {
        guard autoPending, routes?.routed == true else { return }
        autoPending = false
        datapath = .skmsg
    }

    func handle(fd: CInt, events: IOEvents) {
        if events.contains(.writable) {
            if toUpstream.sink == fd { toUpstream.sinkBlocked = false }
            if toClient.sink == fd { toClient.sinkBlocked = false }
        }
        pumpAll()
        if relay.phase == .relaying, events.contains(.error) {
            relay.resetFrom(fd)
        }
    }

    private func pumpAll() {
        for direction in [toUpstream, toClient] {
            guard relay.pump(direction, "\(datapath)") else { return }
            // At once, before the other direction's pump: a reply may already be on its way.
            if let routes {
                routes.publish(up: toUpstream, down: toClient)
                settleAuto()
            }
        }
        if toUpstream.sinkShut && toClient.sinkShut {
            relay.finish(.completed)
            return
        }
        if autoPending, let interactive = AutoRule.decide(toUpstream, toClient) {
            autoPending = false
            if interactive && !toUpstream.sourceEnded && !toClient.sourceEnded {
                switchRequestedAt = relay.loop.now
                setReadingPaused(true)
            }
        }
        if switchRequestedAt != nil && toUpstream.pendingBytes == 0 && toClient.pendingBytes == 0 {
            switchRequestedAt = nil
            if switchToSockmap() { return }
            setReadingPaused(false)
        }
        relay.updateInterests()
    }

    /// Gives the connection to the kernel unless a local endpoint is routed (skmsg serves it
    /// better). The routes are let go first, joined or not.
    private func switchToSockmap() -> Bool {
        guard relay.context.forwarder != nil, routes?.routed != true else { return false }
        routes?.release()
        routes = nil
        return relay.switchToSockmap(from: self)
    }

    private func setReadingPaused(_ paused: Bool) {
        toUpstream.readingPaused = paused
        toClient.readingPaused = paused
    }

    func interest(of fd: CInt) -> Interest? {
        let (outgoing, incoming) = fd == relay.client ? (toUpstream, toClient) : (toClient, toUpstream)
        var interest: Interest = []
        if outgoing.wantsInput { interest.insert(.readable) }
        if incoming.wantsOutput { interest.insert(.writable) }
        if interest.isEmpty && outgoing.sourceEnded && incoming.sinkShut { return nil }
        return interest
    }

    func tick(now: UInt64) {
        if let requestedAt = switchRequestedAt, now &- requestedAt > relay.timings.switchDrain.wholeNanoseconds {
            switchRequestedAt = nil
            setReadingPaused(false)
            pumpAll()
        }
        if relay.phase == .relaying, let routes, routes.sawActivity(now: now, up: toUpstream, down: toClient) {
            relay.lastActivity = now
        }
    }

    func movedCounts() -> (up: UInt64, down: UInt64) {
        let counts = (up: toUpstream.bytesForwarded, down: toClient.bytesForwarded)
        guard let sent = routes?.streamBytes(up: toUpstream, down: toClient) else { return counts }
        return (max(counts.up, sent.up), max(counts.down, sent.down))
    }

    func finalCounts(end: RelayEnd) -> (up: UInt64, down: UInt64) {
        if let routes, !routes.routed, datapath == .skmsg { datapath = .copy }
        return movedCounts()
    }

    func release() {
        routes?.release()
        routes = nil
        toUpstream.releaseResources()
        toClient.releaseResources()
    }
}
