import Foundation
import Logging
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// How `auto` picks a connection's datapath.
///
/// When an endpoint of the connection is a local socket in the endpoints cgroup, `auto` is
/// ``Datapath/skmsg``: measured on loopback (README, "strait proxy"), it moves bulk streams at about
/// direct-connection speed and adds no hop to a round trip. Otherwise:
///
/// Measured on loopback (README, "strait proxy"): sockmap redirection wins on small request/response
/// traffic (lower ping-pong latency than any userspace copy), and loses on bulk transfers (the
/// psock backlog pushes each message separately, about a fifth of direct throughput), where the
/// userspace copy was the fastest of the three at 1, 16 and 128 KiB writes. So a connection starts
/// on ``startDatapath`` (copy);
/// after ``sampleReads`` reads, if bytes flowed both ways and the average read was at most
/// ``interactiveReadBytes``, it moves to sockmap for good; otherwise it stays.
public enum AutoRule {
    public static let startDatapath: Datapath = .copy
    public static let sampleReads = 8
    public static let interactiveReadBytes = 2048

    /// The datapath to move to, or nil to keep sampling (or stay, once decided).
    static func decide(_ up: Direction, _ down: Direction) -> Bool? {
        let reads = up.reads + down.reads
        guard reads >= sampleReads else { return nil }
        let average = (up.bytesRead + down.bytesRead) / reads
        return up.reads > 0 && down.reads > 0 && average <= interactiveReadBytes
    }
}

/// How a proxied connection ended, for the access log and the error counters.
enum RelayEnd: String {
    case completed = "completed"
    case clientReset = "client_reset"
    case upstreamReset = "upstream_reset"
    case connectRefused = "connect_failed"
    case connectTimeout = "connect_timeout"
    case noUpstream = "no_upstream"
    case clientGone = "client_gone"
    case idleTimeout = "idle_timeout"
    case shutdown = "shutdown"
    case failed = "failed"
}

/// One client connection and its upstream connection, relayed on one loop.
///
/// Phases: connecting upstream (the client is polled only for errors), then relaying on the
/// listener's datapath, then closed. Userspace datapaths pump ``Direction``s; the kernel datapath
/// only watches for each side's FIN and carries it across once every byte the kernel redirected
/// has reached the other socket. A reset on one side resets the other (`SO_LINGER` 0).
final class Relay: PollHandler, TickHandler {
    enum Phase { case connecting, relaying, closed }

    let loop: ProxyLoop
    let context: ProxyContext
    let listener: ListenerRuntime
    let settings: ListenerSettings
    let client: CInt
    let clientAddress: SocketAddress?
    private(set) var upstream: CInt = -1
    private var upstreamState: UpstreamState?
    private(set) var phase = Phase.connecting
    /// The datapath bytes move on now (never `.auto`).
    private(set) var datapath: Datapath
    private var switchedFrom: Datapath?
    private var toUpstream: Direction?
    private var toClient: Direction?
    private var pair: SockmapForwarder.Pair?
    /// The skmsg routes, while the relay may use that datapath, and the forwarded counts last told
    /// to the kernel.
    private var route: EndpointForwarder.Route?
    private var publishedUp: UInt64 = 0
    private var publishedDown: UInt64 = 0
    private var lastStreamCheck: UInt64 = 0
    private var streamBytesSeen: UInt64 = 0
    private var clientAckBase: UInt64 = 0
    private var upstreamAckBase: UInt64 = 0
    private var kernelBytesSeen: UInt64 = 0
    private let startedAt: UInt64
    private var connectDeadline: UInt64 = 0
    private var lastActivity: UInt64
    private var lastKernelCheck: UInt64 = 0
    private var autoPending: Bool
    private var switchRequested = false
    private var switchRequestedAt: UInt64 = 0
    private var fastTicking = false
    private var resetSource: CInt?
    private var resetSeenAt: UInt64 = 0

    init(loop: ProxyLoop, context: ProxyContext, listener: ListenerRuntime, settings: ListenerSettings, client: CInt, clientAddress: SocketAddress?) {
        self.loop = loop
        self.context = context
        self.listener = listener
        self.settings = settings
        self.client = client
        self.clientAddress = clientAddress
        startedAt = loop.now
        lastActivity = loop.now
        var requested = settings.config.datapath
        if context.forwarder == nil && (requested == .sockmap || requested == .auto) {
            requested = requested == .auto ? AutoRule.startDatapath : .splice
        }
        if requested == .skmsg && context.endpoints == nil { requested = .copy }
        autoPending = requested == .auto
        datapath = requested == .auto ? AutoRule.startDatapath : requested
    }

    // MARK: Connecting

    /// Picks an upstream and starts connecting. Loop thread.
    func start() {
        loop.addTicker(self)
        clientAckBase = (try? RelayCall.streamCounters(client).acked) ?? 0
        do {
            try loop.register(client, events: 0, handler: self)
        } catch {
            finish(.failed)
            return
        }
        connectNext()
    }

    // issue 16 hook (retries, passive health): the upstreams this connection failed to reach.
    private var failedUpstreams: [UpstreamState] = []

    // issue 16 hook: picks an upstream this connection has not failed to reach
    // (Balancer.nextUpstream(clientAddress:excluding:)) and starts connecting to it. Loop thread.
    private func connectNext() {
        guard let chosen = settings.cluster.balancer.nextUpstream(clientAddress: clientAddress, excluding: failedUpstreams) else {
            finish(failedUpstreams.isEmpty ? .noUpstream : .connectRefused)
            return
        }
        upstreamState = chosen
        chosen.active.add(1, ordering: .relaxed)
        guard case .ip = chosen.address else {
            finish(.failed)
            return
        }
        do throws(SystemCallError) {
            upstream = try SocketCall.socket(domain: chosen.address.domain, type: CInt(SOCK_STREAM.rawValue))
            try? SocketCall.setOption(upstream, level: CInt(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            _ = try chosen.address.withSockaddr { pointer, length throws(SystemCallError) in try SocketCall.connect(upstream, pointer, length) }
            try loop.register(upstream, events: ProxyLoop.output, handler: self)
        } catch {
            context.logger.debug("connect to \(chosen.address) failed at once: \(error)")
            connectFailed(.connectRefused)
            return
        }
        connectStartedAt = loop.now
        connectDeadline = loop.now + settings.config.connectTimeout.wholeNanoseconds
    }

    // issue 16 hook (metrics): when the current connect began, and the bytes already added to
    // `strait_proxy_bytes_total` (ProxyMetrics.addBytes), at most once a second while relaying.
    private var connectStartedAt: UInt64 = 0
    private var countedUp: UInt64 = 0
    private var countedDown: UInt64 = 0
    private var lastByteReport: UInt64 = 0

    // issue 16 hook: bytes moved so far each way, on every datapath: userspace counts, plus the
    // pair's kernel counters on sockmap, or TCP's counters when skmsg endpoints send directly.
    private func liveBytes() -> (up: UInt64, down: UInt64) {
        var up = toUpstream?.bytesForwarded ?? 0
        var down = toClient?.bytesForwarded ?? 0
        if let pair, let forwarder = context.forwarder {
            let redirected = forwarder.redirectedBytes(pair)
            if let direction = toUpstream, case .kernel = direction.mode { up = direction.bytesForwarded &+ redirected.fromFirst }
            if let direction = toClient, case .kernel = direction.mode { down = direction.bytesForwarded &+ redirected.fromSecond }
        }
        if endpointsRouted, let sent = streamBytes() {
            up = max(up, sent.up)
            down = max(down, sent.down)
        }
        return (up, down)
    }

    // issue 16 hook: adds what moved since the last report to ProxyMetrics.addBytes.
    private func reportBytes(up: UInt64, down: UInt64) {
        guard let upstreamState else { return }
        let labels = ProxyMetrics.TrafficLabels(listener: settings.config.name, cluster: settings.config.cluster, upstream: "\(upstreamState.address)", datapath: datapath)
        context.metrics.addBytes(labels, up: up > countedUp ? up &- countedUp : 0, down: down > countedDown ? down &- countedDown : 0)
        countedUp = max(countedUp, up)
        countedDown = max(countedDown, down)
    }

    // issue 16 hook: writes the PROXY v2 header (`send_proxy: v2`) to the just-connected upstream:
    // at most 52 bytes into an empty send buffer, so one write takes it all or the socket failed.
    private func sendProxyHeader() -> Bool {
        guard let clientAddress, let reached = try? SocketAddress.local(of: client) else { return false }
        let header = ProxyHeaderV2.tcp(client: clientAddress, destination: reached).encode()
        let written = try? header.withUnsafeBytes { bytes throws(SystemCallError) in try SocketCall.write(upstream, bytes.baseAddress!, bytes.count) }
        guard case .done(let count)? = written, count == header.count else { return false }
        return true
    }

    // issue 16 hook: a connect failed (`end`: refused or timed out). Tells the balancer (passive
    // health), then tries another upstream while the cluster's `retries` allow, else finishes.
    private func connectFailed(_ end: RelayEnd) {
        guard let failed = upstreamState else {
            finish(end)
            return
        }
        let cluster = settings.config.cluster
        context.metrics.connectFailed(cluster: cluster, upstream: failed.address, ejected: settings.cluster.balancer.connectFailed(failed))
        guard failedUpstreams.count < settings.cluster.balancer.retries else {
            finish(end)
            return
        }
        failedUpstreams.append(failed)
        failed.active.subtract(1, ordering: .relaxed)
        upstreamState = nil
        if upstream >= 0 {
            loop.deregister(upstream)
            closeDescriptor(upstream)
            upstream = -1
        }
        context.metrics.retried(cluster: cluster)
        connectNext()
    }

    private func connected() {
        if let upstreamState { settings.cluster.balancer.connected(upstreamState) }  // issue 16 hook: passive health
        context.metrics.upstreamConnected(cluster: settings.config.cluster, duration: .nanoseconds(Int64(loop.now &- connectStartedAt)))  // issue 16 hook
        // issue 16 hook: the PROXY v2 header goes first, before any client byte and before the
        // sockets join a kernel map.
        if settings.cluster.config.sendProxy == .v2, !sendProxyHeader() {
            finish(.upstreamReset)
            return
        }
        upstreamAckBase = (try? RelayCall.streamCounters(upstream).acked) ?? 0
        phase = .relaying
        lastActivity = loop.now
        if datapath == .sockmap {
            if joinKernel() { return }
            datapath = .splice  // the join failed and said why; stay in userspace
        }
        do {
            try startUserspace()
        } catch {
            finish(.failed)
            return
        }
        if datapath == .skmsg || (autoPending && context.endpoints != nil) { armEndpoints() }
        pumpAll()
    }

    private func startUserspace() throws(SystemCallError) {
        switch datapath {
        case .copy, .skmsg:
            toUpstream = Direction(source: client, sink: upstream, mode: .copy(LinkBuffer()))
            toClient = Direction(source: upstream, sink: client, mode: .copy(LinkBuffer()))
        default:
            let up = try RelayCall.pipe()
            let down: (read: CInt, write: CInt)
            do { down = try RelayCall.pipe() } catch {
                closeDescriptor(up.read)
                closeDescriptor(up.write)
                throw error
            }
            toUpstream = Direction(source: client, sink: upstream, mode: .splice(pipeRead: up.read, pipeWrite: up.write, inPipe: 0))
            toClient = Direction(source: upstream, sink: client, mode: .splice(pipeRead: down.read, pipeWrite: down.write, inPipe: 0))
        }
    }

    /// Hands both sockets to the kernel. True on success; on failure the sockets are untouched.
    private func joinKernel() -> Bool {
        guard let forwarder = context.forwarder, !endpointsRouted else { return false }
        if let route {
            context.endpoints?.release(route)
            self.route = nil
        }
        do {
            pair = try forwarder.join(client, upstream, maxInFlight: settings.config.maxInFlight ?? 0)
        } catch {
            context.metrics.error("sockmap_join")
            context.logger.warning("sockmap join failed, staying in userspace: \(error)")
            return false
        }
        toUpstream?.releaseResources()
        toClient?.releaseResources()
        let up = Direction(source: client, sink: upstream, mode: .kernel)
        let down = Direction(source: upstream, sink: client, mode: .kernel)
        if let previous = toUpstream { up.bytesForwarded = previous.bytesForwarded }
        if let previous = toClient { down.bytesForwarded = previous.bytesForwarded }
        toUpstream = up
        toClient = down
        if datapath != .sockmap { switchedFrom = datapath }
        datapath = .sockmap
        updateInterests()
        return true
    }

    // MARK: Events

    func handle(fd: CInt, events: UInt32) {
        switch phase {
        case .closed:
            return
        case .connecting:
            if fd == client {
                finish(.clientGone)
                return
            }
            let error = (try? SocketCall.option(upstream, level: SOL_SOCKET, name: SO_ERROR)) ?? EIO
            if error != 0 {
                connectFailed(.connectRefused)  // issue 16 hook: retries, passive health
            } else {
                connected()
            }
        case .relaying:
            if datapath == .sockmap {
                kernelEvent(fd: fd, events: events)
                return
            }
            if events & ProxyLoop.output != 0 {
                if toUpstream?.sink == fd { toUpstream?.sinkBlocked = false }
                if toClient?.sink == fd { toClient?.sinkBlocked = false }
            }
            pumpAll()
            if phase == .relaying, events & ProxyLoop.error != 0 {
                resetFrom(fd)
            }
        }
    }

    private func pumpAll() {
        guard let up = toUpstream, let down = toClient else { return }
        for direction in [up, down] {
            do {
                if try direction.pump() { lastActivity = loop.now }
                // At once, before the other direction's pump: a reply may already be on its way.
                if route != nil { publishForwarded(up, down) }
            } catch {
                switch error {
                case .source(let failure):
                    context.logger.debug("reading failed: \(failure)")
                    resetFrom(direction.source)
                case .sink(let failure):
                    context.logger.debug("writing failed: \(failure)")
                    resetFrom(direction.sink)
                }
                return
            }
        }
        if up.sinkShut && down.sinkShut {
            finish(.completed)
            return
        }
        if autoPending, let interactive = AutoRule.decide(up, down) {
            autoPending = false
            if interactive && !up.sourceEnded && !down.sourceEnded {
                switchRequested = true
                switchRequestedAt = loop.now
                up.readingPaused = true
                down.readingPaused = true
            }
        }
        if switchRequested && up.pendingBytes == 0 && down.pendingBytes == 0 {
            switchRequested = false
            if joinKernel() { return }
            up.readingPaused = false
            down.readingPaused = false
        }
        updateInterests()
    }

    private func updateInterests() {
        guard phase == .relaying, let up = toUpstream, let down = toClient else { return }
        for (fd, outgoing, incoming) in [(client, up, down), (upstream, down, up)] {
            var events: UInt32 = 0
            if datapath == .sockmap, case .kernel = outgoing.mode {
                // Input here means the verdict throttled the direction (or the strparser is late).
                if !outgoing.sourceEnded && !outgoing.throttled {
                    events = ProxyLoop.peerHangUp | (inputWatchPaused.contains(fd) ? 0 : ProxyLoop.input)
                }
            } else if outgoing.wantsInput {
                events |= ProxyLoop.input
            }
            if incoming.wantsOutput { events |= ProxyLoop.output }
            if events == 0 && outgoing.sourceEnded && incoming.sinkShut {
                loop.deregister(fd)  // nothing more can happen here; a HUP would only spin
            } else {
                loop.update(fd, events: events)
            }
        }
    }

    // MARK: skmsg datapath

    /// Routes local endpoints' sends straight into the proxy's sockets (``EndpointForwarder``). The
    /// relay keeps copying whatever still arrives on its sockets: bytes sent before an endpoint
    /// switches, and everything from an endpoint that is not local.
    private func armEndpoints() {
        guard let endpoints = context.endpoints, let up = toUpstream, let down = toClient else { return }
        do {
            route = try endpoints.arm(clientSide: client, upstreamSide: upstream, forwardedUp: up.bytesForwarded, forwardedDown: down.bytesForwarded, maxInFlight: settings.config.maxInFlight ?? ListenerConfig.defaultMaxInFlight)
        } catch {
            if case .sockmap(let failure) = error, failure.errno == .notSupported {
                // A socket past ESTABLISHED (its peer already sent FIN) cannot join a sockhash; the
                // little that is left of this connection goes on copy.
                context.logger.debug("skmsg skipped: a side has already half-closed")
                return
            }
            context.metrics.error("skmsg_routes")
            context.logger.warning("skmsg routes failed, staying on copy: \(error)")
            return
        }
        publishedUp = up.bytesForwarded
        publishedDown = down.bytesForwarded
        settleAuto()
    }

    /// Whether an endpoint of this relay is local and routed.
    private var endpointsRouted: Bool { route.map { $0.clientTracked || $0.upstreamTracked } ?? false }

    /// `auto` with a local endpoint is skmsg for good.
    private func settleAuto() {
        guard autoPending, endpointsRouted else { return }
        autoPending = false
        datapath = .skmsg
    }

    /// After pumps: an upstream server's socket may be established a moment after the proxy's
    /// connect returned, so look for untracked endpoints for a few milliseconds; then tell the
    /// kernel what the relay has forwarded, so a waiting endpoint can switch.
    private func publishForwarded(_ up: Direction, _ down: Direction) {
        guard let endpoints = context.endpoints, var current = route else { return }
        if !(current.clientTracked && current.upstreamTracked) && loop.now &- startedAt < Self.endpointLookWindow {
            endpoints.refresh(&current, forwardedUp: up.bytesForwarded, forwardedDown: down.bytesForwarded)
            if current.clientTracked != route?.clientTracked { publishedUp = up.bytesForwarded }
            if current.upstreamTracked != route?.upstreamTracked { publishedDown = down.bytesForwarded }
            route = current
            settleAuto()
        }
        // An endpoint can switch only once the relay holds none of its bytes: publish then.
        if up.bytesForwarded != publishedUp && up.pendingBytes == 0 {
            endpoints.publish(current, .client, forwarded: up.bytesForwarded)
            publishedUp = up.bytesForwarded
        }
        if down.bytesForwarded != publishedDown && down.pendingBytes == 0 {
            endpoints.publish(current, .upstream, forwarded: down.bytesForwarded)
            publishedDown = down.bytesForwarded
        }
    }

    static let endpointLookWindow: UInt64 = 20_000_000

    /// Bytes relayed each way: what went through the proxy's sockets, counted by TCP (acknowledged
    /// plus queued, including what endpoints redirected into them), plus what endpoints sent
    /// straight into each other's receive queues.
    private func streamBytes() -> (up: UInt64, down: UInt64)? {
        guard let up = try? RelayCall.streamCounters(upstream), let down = try? RelayCall.streamCounters(client),
              let upQueued = try? RelayCall.unacknowledgedBytes(upstream), let downQueued = try? RelayCall.unacknowledgedBytes(client)
        else { return nil }
        let direct = route.flatMap { route in context.endpoints?.ingressBytes(route) } ?? (fromClient: 0, fromUpstream: 0)
        // Once a side's write half is shut, its FIN is counted too (it takes a sequence number).
        let finUp: UInt64 = toUpstream?.sinkShut == true ? 1 : 0
        let finDown: UInt64 = toClient?.sinkShut == true ? 1 : 0
        return (up.acked &+ UInt64(upQueued) &- upstreamAckBase &- finUp &+ direct.fromClient,
                down.acked &+ UInt64(downQueued) &- clientAckBase &- finDown &+ direct.fromUpstream)
    }

    // MARK: Kernel datapath

    /// Sockmap events. The kernel moves the bytes; a side is polled for its peer's FIN (carried
    /// once the kernel has written everything before it), for errors, and for input, which means
    /// the verdict throttled that direction (`struct strait_proxy_pair`): its bytes now wait in the
    /// source's own queue, and once the kernel's backlog has reached the sink the relay copies
    /// them. A direction copied this way is pumped here like on `copy`.
    private func kernelEvent(fd: CInt, events: UInt32) {
        guard let up = toUpstream, let down = toClient else { return }
        if events & ProxyLoop.error != 0 {
            // Bytes the reset side sent before its RST may still sit in the peer's psock backlog;
            // a reset now would discard them. Let them reach the peer socket first (bounded).
            if resetSource == nil {
                resetSource = fd
                resetSeenAt = loop.now
                loop.deregister(fd)
                carryKernelReset()
            }
            return
        }
        if events & ProxyLoop.output != 0 {
            for direction in [up, down] where direction.sink == fd { direction.sinkBlocked = false }
        }
        let outgoing = fd == client ? up : down
        if case .kernel = outgoing.mode, !outgoing.throttled, events & (ProxyLoop.input | ProxyLoop.peerHangUp | ProxyLoop.hangUp) != 0 {
            if kernelState(of: outgoing).throttled {
                beginCopying(outgoing)
            } else if events & (ProxyLoop.peerHangUp | ProxyLoop.hangUp) != 0 {
                outgoing.sourceEnded = true
            } else {
                // Input the verdict is about to take (the strparser ran late): look again next tick.
                inputWatchPaused.insert(fd)
            }
        }
        pumpCopied()
        carryKernelHalfClose()
    }

    /// Sockets whose throttle watch (polling input) waits for the next tick after a wake-up that
    /// was not a throttle.
    private var inputWatchPaused: Set<CInt> = []
    private var lastThrottleReport: UInt64 = 0

    /// What the verdict recorded for the direction out of `direction.source`.
    private func kernelState(of direction: Direction) -> SockmapForwarder.DirectionState {
        guard let pair, let forwarder = context.forwarder else { return SockmapForwarder.DirectionState() }
        let both = forwarder.state(pair)
        return direction.source == pair.first ? both.fromFirst : both.fromSecond
    }

    /// Bytes written into `direction.sink` since the relay began (TCP: acknowledged plus queued,
    /// less the FIN once sent), or nil if the socket cannot say.
    private func writtenBytes(_ direction: Direction) -> UInt64? {
        guard let counters = try? RelayCall.streamCounters(direction.sink), let queued = try? RelayCall.unacknowledgedBytes(direction.sink)
        else { return nil }
        let base = direction.sink == upstream ? upstreamAckBase : clientAckBase
        return counters.acked &+ UInt64(queued) &- base &- (direction.sinkShut ? 1 : 0)
    }

    /// The verdict throttled `direction`: poll fast until the kernel's backlog has reached the
    /// sink, then copy it (``completeCopying(_:)``).
    private func beginCopying(_ direction: Direction) {
        direction.throttled = true
        context.metrics.error("sockmap_throttled")
        context.logger.debug("sockmap: \(direction.source == client ? "client" : "upstream") side over its in-flight budget; copying it once the kernel's backlog is out")
        completeCopying(direction)
    }

    /// Once every redirected byte is in the sink's send queue, replaces the kernel direction with a
    /// copying one: what the source's queue holds now comes after all of them, in order.
    private func completeCopying(_ direction: Direction) {
        // Only the relay's current directions: a caller's loop may still hold one replaced here.
        guard direction.throttled, case .kernel = direction.mode, direction === toUpstream || direction === toClient else { return }
        let state = kernelState(of: direction)
        guard let written = writtenBytes(direction), written >= direction.bytesForwarded &+ state.redirected else {
            if loop.now &- lastThrottleReport > 1_000_000_000 {
                lastThrottleReport = loop.now
                context.logger.debug("sockmap: waiting for the backlog: written \(writtenBytes(direction) ?? 0) of \(direction.bytesForwarded) + \(state.redirected), passed \(state.passed)")
            }
            setFastTicks(true)
            return
        }
        context.logger.debug("sockmap: backlog out (\(written) bytes written), copying \(direction.source == client ? "client" : "upstream") side")
        let copying = Direction(source: direction.source, sink: direction.sink, mode: .copy(LinkBuffer()))
        copying.bytesForwarded = direction.bytesForwarded &+ state.redirected
        copying.confirmEnd = { [unowned self, unowned copying] in
            // Every byte the source received (less its FIN) has been read by the verdict or by us.
            guard let received = try? RelayCall.streamCounters(copying.source).received else { return true }
            return received &- 1 <= copying.bytesForwarded &+ UInt64(copying.pendingBytes) || self.phase != .relaying
        }
        if direction === toUpstream { toUpstream = copying } else { toClient = copying }
        direction.throttled = false  // replaced: nothing acts on it again
        pumpCopied()
        carryKernelHalfClose()
    }

    /// Pumps the directions that left the kernel (throttled), like on `copy`.
    private func pumpCopied() {
        guard phase == .relaying, let up = toUpstream, let down = toClient else { return }
        for direction in [up, down] {
            guard case .copy = direction.mode else { continue }
            do {
                if try direction.pump() { lastActivity = loop.now }
            } catch {
                switch error {
                case .source(let failure):
                    context.logger.debug("sockmap, copied direction: reading failed: \(failure)")
                    resetFrom(direction.source)
                case .sink(let failure):
                    context.logger.debug("sockmap, copied direction: writing failed: \(failure)")
                    resetFrom(direction.sink)
                }
                return
            }
        }
    }

    /// For each kernel direction whose source sent FIN: once every byte the source received has
    /// been written into the sink (TCP_INFO bytes acked plus SIOCOUTQ, against the source's bytes
    /// received less the FIN), shut the sink's write side. Until then, poll every millisecond; no
    /// deadline while the sink takes bytes (a slow reader is not an idle one): the idle timeout
    /// alone ends a wait that makes no progress.
    private func carryKernelHalfClose() {
        guard phase == .relaying, let up = toUpstream, let down = toClient else { return }
        var waiting = false
        for direction in [up, down] {
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
            guard let source = try? RelayCall.streamCounters(direction.source), let written = writtenBytes(direction) else {
                resetFrom(direction.sink)
                return
            }
            let received = source.received &- 1
            if written >= received {
                direction.sinkShut = true
                try? SocketCall.shutdown(direction.sink, how: CInt(SHUT_WR))
            } else if kernelState(of: direction).throttled {
                beginCopying(direction)  // the last messages went over the budget: copy them
                waiting = true
            } else {
                if written != direction.lastWrittenSeen {
                    direction.lastWrittenSeen = written
                    lastActivity = loop.now
                }
                waiting = true
            }
        }
        guard phase == .relaying, let up = toUpstream, let down = toClient else { return }
        setFastTicks(waiting)
        if up.sinkShut && down.sinkShut {
            finish(.completed)
        } else {
            updateInterests()
        }
    }

    /// After a reset on `resetSource`: once its received bytes are all in the peer socket (or
    /// 100 ms passed), reset the peer too.
    private func carryKernelReset() {
        guard phase == .relaying, let source = resetSource, let up = toUpstream, let down = toClient else { return }
        let direction = source == client ? up : down
        var flushed = direction.sinkShut
        if !flushed, let from = try? RelayCall.streamCounters(direction.source), let written = writtenBytes(direction) {
            flushed = written >= from.received &- (direction.sourceEnded ? 1 : 0)
        }
        if flushed || loop.now &- resetSeenAt > 100_000_000 {
            resetFrom(source)
        } else {
            setFastTicks(true)
        }
    }

    private func setFastTicks(_ on: Bool) {
        guard on != fastTicking else { return }
        fastTicking = on
        loop.fastTickRequests += on ? 1 : -1
    }

    // MARK: Deadlines

    func tick(now: UInt64) {
        switch phase {
        case .closed:
            return
        case .connecting:
            if now >= connectDeadline { connectFailed(.connectTimeout) }  // issue 16 hook: retries, passive health
        case .relaying:
            if datapath == .sockmap {
                if resetSource != nil {
                    carryKernelReset()
                    return
                }
                if fastTicking {
                    for direction in [toUpstream, toClient] where direction?.awaitingEnd == true { direction?.awaitingEnd = false }
                    pumpCopied()
                    carryKernelHalfClose()
                }
                if !inputWatchPaused.isEmpty {
                    inputWatchPaused.removeAll()
                    updateInterests()
                }
                if phase == .relaying, now &- lastKernelCheck >= 1_000_000_000, let pair, let forwarder = context.forwarder {
                    lastKernelCheck = now
                    let counts = forwarder.redirectedBytes(pair)
                    let seen = counts.fromFirst &+ counts.fromSecond
                    if seen != kernelBytesSeen {
                        kernelBytesSeen = seen
                        lastActivity = now
                    }
                }
            }
            // A switch waits for buffered bytes to reach the peers with reading paused; a peer that
            // only reads after it has written could wait forever, so give up after 50 ms and stay.
            if switchRequested, now &- switchRequestedAt > 50_000_000, let up = toUpstream, let down = toClient {
                switchRequested = false
                up.readingPaused = false
                down.readingPaused = false
                pumpAll()
            }
            // Bytes an endpoint redirects never wake the relay: TCP's counters show them.
            if endpointsRouted, now &- lastStreamCheck >= 1_000_000_000 {
                lastStreamCheck = now
                if let sent = streamBytes(), sent.up &+ sent.down != streamBytesSeen {
                    streamBytesSeen = sent.up &+ sent.down
                    lastActivity = now
                }
            }
            if phase == .relaying, now &- lastByteReport >= 1_000_000_000 {  // issue 16 hook: live byte counters
                lastByteReport = now
                let moved = liveBytes()
                reportBytes(up: moved.up, down: moved.down)
            }
            if phase == .relaying, let idle = settings.config.idleTimeout, now &- lastActivity >= idle.wholeNanoseconds {
                finish(.idleTimeout)
            }
        }
    }

    // MARK: Closing

    /// Bytes of `direction` that reached its sink's TCP send queue and, when the sink is about to
    /// be reset (`reset`: its queue is discarded), only those its peer acknowledged.
    private func deliveredBytes(_ direction: Direction, reset: Bool) -> UInt64? {
        guard let written = writtenBytes(direction) else { return nil }
        guard reset, let counters = try? RelayCall.streamCounters(direction.sink) else { return written }
        let base = direction.sink == upstream ? upstreamAckBase : clientAckBase
        return min(written, counters.acked &- base)
    }

    /// `fd` reset or failed: reset the other side, close both.
    private func resetFrom(_ fd: CInt) {
        finish(fd == client ? .clientReset : .upstreamReset)
    }

    /// Closes everything, logs the connection, updates counters. Idempotent. Loop thread.
    func finish(_ end: RelayEnd) {
        guard phase != .closed else { return }
        phase = .closed
        setFastTicks(false)
        loop.removeTicker(self)
        loop.deregister(client)
        if upstream >= 0 { loop.deregister(upstream) }
        var bytesUp = toUpstream?.bytesForwarded ?? 0
        var bytesDown = toClient?.bytesForwarded ?? 0
        if let pair, let forwarder = context.forwarder {
            // What reached each peer's socket, not what the verdict took in: bytes still in a
            // backlog when the relay ends are lost with it, and a reset loses what is unsent.
            if let up = toUpstream, let down = toClient {
                bytesUp = deliveredBytes(up, reset: end == .clientReset) ?? bytesUp
                bytesDown = deliveredBytes(down, reset: end == .upstreamReset) ?? bytesDown
            }
            forwarder.release(pair)
        }
        if let route, let endpoints = context.endpoints {
            if let sent = streamBytes() {
                bytesUp = max(bytesUp, sent.up)
                bytesDown = max(bytesDown, sent.down)
            }
            endpoints.release(route)
            if !endpointsRouted && datapath == .skmsg { datapath = .copy }
        }
        toUpstream?.releaseResources()
        toClient?.releaseResources()
        switch end {
        case .clientReset:
            if upstream >= 0 { RelayCall.closeWithReset(upstream) }
            closeDescriptor(client)
        case .upstreamReset:
            RelayCall.closeWithReset(client)
            closeDescriptor(upstream)
        default:
            closeDescriptor(client)
            if upstream >= 0 { closeDescriptor(upstream) }
        }
        let shownPath = switchedFrom.map { "auto(\($0)→sockmap)" } ?? (settings.config.datapath == .auto ? "auto(\(datapath))" : "\(datapath)")
        reportBytes(up: bytesUp, down: bytesDown)  // issue 16 hook: the rest of the bytes
        context.metrics.connectionClosed(listener: settings.config.name, duration: .nanoseconds(Int64(loop.now &- startedAt)), end: end)
        // After the counters: whoever sees the connection gone sees its bytes counted.
        upstreamState?.active.subtract(1, ordering: .relaxed)
        listener.active.subtract(1, ordering: .relaxed)
        if context.accessLog.load(ordering: .relaxed) {
            // issue 16 hook: queued for the access log's writer thread, never written here.
            context.accessLogWriter.record(AccessEntry(
                time: Date().timeIntervalSince1970, listener: settings.config.name,
                client: clientAddress.map(String.init(describing:)) ?? "?", upstream: upstreamState.map { String(describing: $0.address) } ?? "-",
                datapath: shownPath, bytesUp: bytesUp, bytesDown: bytesDown, durationSeconds: Double(loop.now &- startedAt) / 1e9, end: end.rawValue))
        }
    }
}
