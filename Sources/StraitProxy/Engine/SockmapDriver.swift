import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The kernel datapath: both sockets are in the proxy's sockmap and its SK_SKB verdict redirects
/// each one's bytes into the other (``SockmapForwarder``). Userspace only watches:
/// - a side is polled for its peer's FIN (`EPOLLRDHUP`), carried across (`SHUT_WR`) once every
///   byte the kernel redirected before it has reached the other socket (TCP_INFO bytes acked plus
///   `SIOCOUTQ`, against the source's bytes received less the FIN); until then the relay ticks
///   every ``ProxyTimings/fastTick``, with no deadline while the sink takes bytes (a slow reader
///   is not an idle one): the idle timeout alone ends a wait that makes no progress;
/// - for errors: a reset is carried across once the reset side's bytes are in the peer socket, or
///   after ``ProxyTimings/resetFlush``;
/// - for input, which means the verdict throttled that direction (over its in-flight budget,
///   `struct strait_proxy_pair`): its bytes now wait in the source's own queue, and once the
///   kernel's backlog has reached the sink the direction is replaced by a copying one, pumped
///   here like on copy.
///
/// Owns the pair's map entries until ``release()``. Loop thread only.
final class SockmapDriver: RelayDriver {
    unowned let relay: Relay
    let forwarder: SockmapForwarder
    let pair: SockmapForwarder.Pair
    private(set) var toUpstream: Direction
    private(set) var toClient: Direction
    /// The socket that reported an error, while its redirected bytes are still being flushed.
    private var resetSource: CInt?
    private var resetSeenAt: UInt64 = 0
    /// Sockets whose throttle watch (polling input) waits for the next tick after a wake-up that
    /// was not a throttle.
    private var inputWatchPaused: Set<CInt> = []
    private var lastThrottleReport: UInt64 = 0
    /// Bytes the verdict had redirected at the last look (``ProxyTimings/activityCheck``).
    private var kernelBytesSeen: UInt64 = 0
    private var lastKernelCheck: UInt64 = 0

    var datapath: Datapath { .sockmap }

    init(relay: Relay, forwarder: SockmapForwarder, pair: SockmapForwarder.Pair) {
        self.relay = relay
        self.forwarder = forwarder
        self.pair = pair
        toUpstream = Direction(source: relay.client, sink: relay.upstream, mode: .kernel)
        toClient = Direction(source: relay.upstream, sink: relay.client, mode: .kernel)
    }

    func handle(fd: CInt, events: IOEvents) {
        if events.contains(.error) {
            // Bytes the reset side sent before its RST may still sit in the peer's psock backlog;
            // a reset now would discard them. Let them reach the peer socket first (bounded).
            if resetSource == nil {
                resetSource = fd
                resetSeenAt = relay.loop.now
                relay.stopPolling(fd)
                carryReset()
            }
            return
        }
        if events.contains(.writable) {
            for direction in [toUpstream, toClient] where direction.sink == fd { direction.sinkBlocked = false }
        }
        let outgoing = fd == relay.client ? toUpstream : toClient
        if case .kernel = outgoing.mode, !outgoing.throttled, !events.isDisjoint(with: [.readable, .readHangUp, .hangUp]) {
            if kernelState(of: outgoing).throttled {
                beginCopying(outgoing)
            } else if !events.isDisjoint(with: [.readHangUp, .hangUp]) {
                outgoing.sourceEnded = true
            } else {
                // Input the verdict is about to take (the strparser ran late): look again next tick.
                inputWatchPaused.insert(fd)
            }
        }
        pumpCopied()
        carryHalfClose()
    }

    func interest(of fd: CInt) -> Interest? {
        let (outgoing, incoming) = fd == relay.client ? (toUpstream, toClient) : (toClient, toUpstream)
        var interest: Interest = []
        if case .kernel = outgoing.mode {
            // Input here means the verdict throttled the direction (or the strparser is late).
            if !outgoing.sourceEnded && !outgoing.throttled {
                interest = inputWatchPaused.contains(fd) ? .readHangUp : [.readHangUp, .readable]
            }
        } else if outgoing.wantsInput {
            interest.insert(.readable)
        }
        if incoming.wantsOutput { interest.insert(.writable) }
        if interest.isEmpty && outgoing.sourceEnded && incoming.sinkShut { return nil }
        return interest
    }

    func tick(now: UInt64) {
        if resetSource != nil {
            carryReset()
            return
        }
        if relay.isFastTicking {
            for direction in [toUpstream, toClient] where direction.awaitingEnd { direction.awaitingEnd = false }
            pumpCopied()
            carryHalfClose()
        }
        if !inputWatchPaused.isEmpty {
            inputWatchPaused.removeAll()
            relay.updateInterests()
        }
        if relay.phase == .relaying, now &- lastKernelCheck >= relay.timings.activityCheck.wholeNanoseconds {
            lastKernelCheck = now
            let counts = forwarder.redirectedBytes(pair)
            let seen = counts.fromFirst &+ counts.fromSecond
            if seen != kernelBytesSeen {
                kernelBytesSeen = seen
                relay.lastActivity = now
            }
        }
    }

    // MARK: Throttled directions

    /// What the verdict recorded for the direction out of `direction.source`.
    private func kernelState(of direction: Direction) -> SockmapForwarder.DirectionState {
        let both = forwarder.state(pair)
        return direction.source == pair.first ? both.fromFirst : both.fromSecond
    }

    private func written(_ direction: Direction) -> UInt64? {
        relay.writtenBytes(into: direction.sink, finSent: direction.sinkShut)
    }

    /// The verdict throttled `direction`: tick fast until the kernel's backlog has reached the
    /// sink, then copy it (``completeCopying(_:)``).
    private func beginCopying(_ direction: Direction) {
        direction.throttled = true
        relay.context.metrics.error("sockmap_throttled")
        relay.context.logger.debug("sockmap: \(direction.source == relay.client ? "client" : "upstream") side over its in-flight budget; copying it once the kernel's backlog is out")
        completeCopying(direction)
    }

    /// Once every redirected byte is in the sink's send queue, replaces the kernel direction with a
    /// copying one: what the source's queue holds now comes after all of them, in order.
    private func completeCopying(_ direction: Direction) {
        // Only the current directions: a caller's loop may still hold one replaced here.
        guard direction.throttled, case .kernel = direction.mode, direction === toUpstream || direction === toClient else { return }
        let state = kernelState(of: direction)
        let now = relay.loop.now
        guard let written = written(direction), written >= direction.bytesForwarded &+ state.redirected else {
            if now &- lastThrottleReport > relay.timings.throttleReport.wholeNanoseconds {
                lastThrottleReport = now
                relay.context.logger.debug("sockmap: waiting for the backlog: written \(self.written(direction) ?? 0) of \(direction.bytesForwarded) + \(state.redirected), passed \(state.passed)")
            }
            relay.setFastTicks(true)
            return
        }
        relay.context.logger.debug("sockmap: backlog out (\(written) bytes written), copying \(direction.source == relay.client ? "client" : "upstream") side")
        let copying = Direction(source: direction.source, sink: direction.sink, mode: .copy(LinkBuffer()))
        copying.bytesForwarded = direction.bytesForwarded &+ state.redirected
        copying.confirmEnd = { [unowned relay, unowned copying] in
            // Every byte the source received (less its FIN) has been read by the verdict or by us.
            guard let received = relay.receivedBytes(from: copying.source) else { return true }
            return received &- 1 <= copying.bytesForwarded &+ UInt64(copying.pendingBytes) || relay.phase != .relaying
        }
        if direction === toUpstream { toUpstream = copying } else { toClient = copying }
        direction.throttled = false  // replaced: nothing acts on it again
        pumpCopied()
        carryHalfClose()
    }

    /// Pumps the directions that left the kernel (throttled), like on copy.
    private func pumpCopied() {
        guard relay.phase == .relaying else { return }
        for direction in [toUpstream, toClient] {
            guard case .copy = direction.mode else { continue }
            guard relay.pump(direction, "sockmap, copied direction") else { return }
        }
    }

    // MARK: Half-close and reset

    /// For each kernel direction whose source sent FIN: once every byte the source received has
    /// been written into the sink, shut the sink's write side. Ticks fast while any waits.
    private func carryHalfClose() {
        guard relay.phase == .relaying else { return }
        var waiting = false
        for direction in [toUpstream, toClient] {
            if direction.throttled, case .kernel = direction.mode {
                completeCopying(direction)
                waiting = true
                continue
            }
            if direction.awaitingEnd {
                waiting = true
                continue
            }
            guard case .kernel = direction.mode, direction.sourceEnded, !direction.sinkShut else { continue }
            guard let sourceReceived = relay.receivedBytes(from: direction.source), let written = written(direction) else {
                relay.resetFrom(direction.sink)
                return
            }
            let received = sourceReceived &- 1
            if written >= received {
                direction.sinkShut = true
                try? SocketCall.shutdown(direction.sink, how: CInt(SHUT_WR))
            } else if kernelState(of: direction).throttled {
                beginCopying(direction)  // the last messages went over the budget: copy them
                waiting = true
            } else {
                if written != direction.lastWrittenSeen {
                    direction.lastWrittenSeen = written
                    relay.lastActivity = relay.loop.now
                }
                waiting = true
            }
        }
        guard relay.phase == .relaying else { return }
        relay.setFastTicks(waiting)
        if toUpstream.sinkShut && toClient.sinkShut {
            relay.finish(.completed)
        } else {
            relay.updateInterests()
        }
    }

    /// After a reset on ``resetSource``: once its received bytes are all in the peer socket (or
    /// ``ProxyTimings/resetFlush`` passed), reset the peer too.
    private func carryReset() {
        guard relay.phase == .relaying, let source = resetSource else { return }
        let direction = source == relay.client ? toUpstream : toClient
        var flushed = direction.sinkShut
        if !flushed, let received = relay.receivedBytes(from: direction.source), let written = written(direction) {
            flushed = written >= received &- (direction.sourceEnded ? 1 : 0)
        }
        if flushed || relay.loop.now &- resetSeenAt > relay.timings.resetFlush.wholeNanoseconds {
            relay.resetFrom(source)
        } else {
            relay.setFastTicks(true)
        }
    }

    // MARK: Closing

    func movedCounts() -> (up: UInt64, down: UInt64) {
        (written(toUpstream) ?? toUpstream.bytesForwarded, written(toClient) ?? toClient.bytesForwarded)
    }

    /// What reached each peer's socket, not what the verdict took in: bytes still in a backlog
    /// when the relay ends are lost with it, and a reset loses what is unsent.
    func finalCounts(end: RelayEnd) -> (up: UInt64, down: UInt64) {
        (delivered(toUpstream, reset: end == .clientReset) ?? toUpstream.bytesForwarded,
         delivered(toClient, reset: end == .upstreamReset) ?? toClient.bytesForwarded)
    }

    /// Bytes of `direction` that reached its sink's TCP send queue and, when the sink is about to
    /// be reset (`reset`: its queue is discarded), only those its peer acknowledged.
    private func delivered(_ direction: Direction, reset: Bool) -> UInt64? {
        guard let written = written(direction) else { return nil }
        guard reset, let counters = try? RelayCall.streamCounters(direction.sink) else { return written }
        let base = direction.sink == relay.upstream ? relay.ackBase.upstream : relay.ackBase.client
        return min(written, counters.acked &- base)
    }

    func release() {
        forwarder.release(pair)
        toUpstream.releaseResources()
        toClient.releaseResources()
    }
}
