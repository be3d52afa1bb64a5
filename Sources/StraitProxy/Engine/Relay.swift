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
    /// Where an `auto` connection not on skmsg starts, and stays when its traffic is bulk: copy, the
    /// fastest userspace datapath measured on bulk transfers.
    public static let startDatapath: Datapath = .copy
    /// Reads of both directions together after which the rule decides: few enough that an
    /// interactive connection moves within its first exchanges.
    public static let sampleReads = 8
    /// The largest average read, in bytes, that still counts as interactive (2 KiB): small
    /// request/response messages stay under it, while a bulk transfer's reads return far more each.
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
    /// `accept_proxy`: the client's PROXY header was malformed, truncated, oversized or late.
    case proxyHeaderRejected = "proxy_header_rejected"
    case shutdown = "shutdown"
    case failed = "failed"
}

/// One client connection and its upstream connection, relayed on one StraitNet loop.
///
/// A state machine of four phases:
/// - **awaitingHeader** (listeners with `accept_proxy` only): the client's PROXY header is taken
///   off the socket (``ProxyHeaderReader``) within `connect_timeout`, and its source becomes the
///   client's address; nothing is connected before it, and a bad header closes the client alone.
///   The payload behind it stays in the client's queue for the datapath;
/// - **connecting**: an upstream is picked and connected to; the client is polled only for
///   hang-ups and errors, and `connect_timeout` runs;
/// - **relaying**: a ``RelayDriver`` moves the bytes on the listener's datapath (``UserspaceDriver``
///   for copy, splice and skmsg, ``SockmapDriver`` for the kernel's); `auto` starts on the
///   userspace driver and may hand over to sockmap once (``switchToSockmap(from:)``);
/// - **closed**: both sockets closed (a reset on one side resets the other, `SO_LINGER` 0), the
///   counters and the access log written.
///
/// **Ownership.** The relay owns both sockets as ``OwnedDescriptor``s: the client's from accept (the
/// acceptor moves it in), the upstream's from the `socket(2)` of each connect attempt. They leave
/// only in ``finish(_:)`` (closed, or reset with `SO_LINGER` 0), after the registrations are
/// deregistered, or in a failed attempt's clean-up; a relay dropped any other way still closes
/// them, never twice. The numbers ``client`` and ``upstream`` name the sockets for system calls and
/// event dispatch while the relay owns them. The ``RelayLoop``
/// holds the relay from start to finish. Loop thread only.
final class Relay: DescriptorHandler, @unchecked Sendable {
    enum Phase { case awaitingHeader, connecting, relaying, closed }

    let home: RelayLoop
    let context: ProxyContext
    let listener: ListenerRuntime
    let settings: ListenerSettings
    /// The client socket's number, for system calls and to tell events apart; owned by ``clientSocket``.
    let client: CInt
    /// Owns the client socket until ``finish(_:)`` closes it.
    private var clientSocket: OwnedDescriptor?
    /// The client's address: the peer's, or the one its PROXY header gave (`accept_proxy`).
    private(set) var clientAddress: SocketAddress?
    /// The address the client reached, as its PROXY header gave it (`send_proxy` passes it on);
    /// nil: the client socket's own local address.
    private var headerDestination: SocketAddress?
    /// Bytes of the PROXY header read off the client socket: TCP counts them as received, but
    /// they are never forwarded (``receivedBytes(from:)``).
    private var headerLength: UInt64 = 0
    /// The datapath this connection is counted under in its upstream's ``DatapathMix``.
    private var countedDatapath: Datapath?
    /// The upstream socket's number while ``upstreamSocket`` owns one; -1 before the first connect
    /// attempt, between attempts and after ``finish(_:)``.
    var upstream: CInt { upstreamSocket?.rawValue ?? -1 }
    /// Owns the upstream socket of the current connect attempt until it fails or ``finish(_:)``.
    private var upstreamSocket: OwnedDescriptor?
    private var clientRegistration: DescriptorRegistration?
    private var upstreamRegistration: DescriptorRegistration?
    private var upstreamState: UpstreamState?
    private(set) var phase = Phase.connecting
    /// The datapath the connection starts relaying on (never `.auto`).
    private let startDatapath: Datapath
    private var driver: (any RelayDriver)?
    /// The datapath before an `auto` switch to sockmap, for the access log.
    private var switchedFrom: Datapath?
    /// TCP's acknowledged-bytes counter of each socket when relaying began (the handshake may
    /// count one): subtracted from later readings.
    private(set) var ackBase = (client: UInt64(0), upstream: UInt64(0))
    let startedAt: UInt64
    /// The last time bytes moved (or the kernel said they did): the idle timeout counts from here.
    var lastActivity: UInt64
    private var ticker: LoopTimer?
    private var fastTicking = false
    /// The upstreams this connection failed to reach (retries and passive health skip them).
    private var failedUpstreams: [UpstreamState] = []
    /// When the current connect attempt began: its timeout and the connect-time histogram count from here.
    private var connectStartedAt: UInt64 = 0
    /// Bytes already added to `strait_proxy_bytes_total`, and when (at most once a ``ProxyTimings/byteReport``).
    private var counted = (up: UInt64(0), down: UInt64(0), at: UInt64(0))

    var loop: EventLoop { home.loop }
    var timings: ProxyTimings { context.timings }

    init(home: RelayLoop, context: ProxyContext, listener: ListenerRuntime, settings: ListenerSettings, client: consuming OwnedDescriptor, clientAddress: SocketAddress?) {
        self.home = home
        self.context = context
        self.listener = listener
        self.settings = settings
        self.client = client.rawValue
        clientSocket = Optional(consume client)
        self.clientAddress = clientAddress
        startedAt = home.loop.now
        lastActivity = home.loop.now
        var requested = settings.config.datapath
        if context.forwarder == nil && (requested == .sockmap || requested == .auto) {
            requested = requested == .auto ? AutoRule.startDatapath : .splice
        }
        if requested == .skmsg && context.endpoints == nil { requested = .copy }
        startDatapath = requested
    }

    /// The datapath bytes move on now (never `.auto`).
    var datapath: Datapath { driver?.datapath ?? (startDatapath == .auto ? AutoRule.startDatapath : startDatapath) }

    // MARK: Connecting

    /// Picks an upstream and starts connecting. Loop thread.
    func start() {
        home.add(self)
        let ticker = LoopTimer(loop: loop) { [weak self] in self?.tick() }
        ticker.schedule(every: timings.tick)
        self.ticker = ticker
        ackBase.client = (try? RelayCall.streamCounters(client).acked) ?? 0
        let awaitsHeader = settings.config.acceptProxy != nil
        do {
            // Edge-triggered while the header is awaited: the peeked bytes stay queued.
            clientRegistration = try loop.register(descriptor: client, interest: awaitsHeader ? [.readable, .readHangUp, .edgeTriggered] : [], handler: self)
        } catch {
            finish(.failed)
            return
        }
        if awaitsHeader {
            phase = .awaitingHeader
        } else {
            connectNext()
        }
    }

    /// Takes the client's PROXY header once it is all there (`peerClosed`: no more bytes will
    /// come), then connects; a bad one closes the client and is counted. Loop thread.
    private func readProxyHeader(peerClosed: Bool) {
        switch ProxyHeaderReader.read(client, peerClosed: peerClosed) {
        case .waiting:
            return
        case .rejected(let reason, let detail):
            rejectProxyHeader(reason, detail)
        case .header(let header, let length):
            headerLength = UInt64(length)
            if let addresses = header.socketAddresses {
                clientAddress = addresses.source
                headerDestination = addresses.destination
            }
            do { try clientRegistration?.setInterest([]) } catch {
                finish(.failed)
                return
            }
            phase = .connecting
            connectNext()
        }
    }

    private func rejectProxyHeader(_ reason: ProxyHeaderReader.Rejection, _ detail: String) {
        context.logger.debug("PROXY header from \(clientAddress.map(String.init(describing:)) ?? "?") refused (\(reason.rawValue)): \(detail)")
        context.metrics.proxyHeaderRejected(listener: settings.config.name, reason: reason)
        finish(.proxyHeaderRejected)
    }

    /// Picks an upstream this connection has not failed to reach (``Balancer/nextUpstream(clientAddress:excluding:)``)
    /// and starts connecting to it. Loop thread.
    private func connectNext() {
        guard let chosen = settings.cluster.balancer.nextUpstream(clientAddress: clientAddress, excluding: failedUpstreams) else {
            finish(failedUpstreams.isEmpty ? .noUpstream : .connectRefused)
            return
        }
        connectStartedAt = loop.now
        upstreamState = chosen
        chosen.active.add(1, ordering: .relaxed)
        guard case .ip = chosen.address else {
            finish(.failed)
            return
        }
        do throws(SystemCallError) {
            upstreamSocket = OwnedDescriptor(taking: try SocketCall.socket(domain: chosen.address.domain, type: CInt(SOCK_STREAM.rawValue)))
            try? SocketCall.setOption(upstream, level: CInt(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            _ = try SocketCall.connect(upstream, to: chosen.address)
            upstreamRegistration = try loop.register(descriptor: upstream, interest: .writable, handler: self)
        } catch {
            context.logger.debug("connect to \(chosen.address) failed at once: \(error)")
            connectFailed(.connectRefused)
            return
        }
    }

    /// A connect failed (`end`: refused or timed out). Tells the balancer (passive health), then
    /// tries another upstream while the cluster's `retries` allow, else finishes.
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
        upstreamRegistration?.deregister()
        upstreamRegistration = nil
        upstreamSocket.take()?.close()
        context.metrics.retried(cluster: cluster)
        connectNext()
    }

    /// Writes the PROXY v2 header (`send_proxy: v2`) to the just-connected upstream: at most 52
    /// bytes into an empty send buffer, so one write takes it all or the socket failed. Returns
    /// the bytes written, nil on failure.
    private func sendProxyHeader() -> Int? {
        guard let clientAddress, let reached = headerDestination ?? (try? SocketAddress.local(of: client)) else { return nil }
        let header = ProxyHeaderV2.tcp(client: clientAddress, destination: reached).encode()
        let written = try? header.withUnsafeBytes { bytes throws(SystemCallError) in try SocketCall.write(upstream, bytes.baseAddress!, bytes.count) }
        guard case .done(let count)? = written, count == header.count else { return nil }
        return count
    }

    private func connected() {
        if let upstreamState { settings.cluster.balancer.connected(upstreamState) }
        context.metrics.upstreamConnected(cluster: settings.config.cluster, duration: .nanoseconds(Int64(loop.now &- connectStartedAt)))
        // The PROXY v2 header goes first, before any client byte and before the sockets join a
        // kernel map; its bytes are not the client's, so the upstream's base counts them.
        ackBase.upstream = (try? RelayCall.streamCounters(upstream).acked) ?? 0
        if settings.cluster.config.sendProxy == .v2 {
            guard let sent = sendProxyHeader() else {
                finish(.upstreamReset)
                return
            }
            ackBase.upstream &+= UInt64(sent)
        }
        startRelaying()
    }

    /// Starts the listener's datapath on both sockets.
    private func startRelaying() {
        phase = .relaying
        lastActivity = loop.now
        if startDatapath == .sockmap {
            if switchToSockmap(from: nil) { return }
            // The join failed and said why; stay in userspace.
        }
        let userspace: UserspaceDriver
        do {
            userspace = try UserspaceDriver(relay: self, datapath: startDatapath == .sockmap ? .splice : startDatapath)
        } catch {
            finish(.failed)
            return
        }
        driver = userspace
        countDatapath()  // before its first bytes move: whoever sees them sees it counted
        userspace.begin()
        countDatapath(settling: true)  // `auto` with a local endpoint settled on skmsg
    }

    /// Moves this connection's count in its upstream's ``DatapathMix`` to the datapath it runs on
    /// now (at the start, after an `auto` switch). `settling`: the datapath was only resolved as
    /// the driver began (skmsg), so the first count is corrected rather than a switch. Loop thread.
    func countDatapath(settling: Bool = false) {
        guard phase == .relaying, let upstreamState, let now = driver?.datapath, now != countedDatapath else { return }
        upstreamState.datapaths.moved(from: countedDatapath, to: now, correcting: settling)
        countedDatapath = now
    }

    /// Hands both sockets to the kernel (``SockmapDriver``), carrying over the bytes `previous`
    /// already forwarded. True on success; on failure the sockets are untouched and `previous`
    /// stays in charge.
    func switchToSockmap(from previous: UserspaceDriver?) -> Bool {
        guard let forwarder = context.forwarder else { return false }
        if previous != nil {
            context.logger.debug("auto: joining sockmap with \((try? SocketCall.readableBytes(client)) ?? -1) client and \((try? SocketCall.readableBytes(upstream)) ?? -1) upstream bytes queued")
        }
        let pair: SockmapForwarder.Pair
        do {
            pair = try forwarder.join(client, upstream, maxInFlight: settings.config.maxInFlight ?? 0)
        } catch {
            context.metrics.error("sockmap_join")
            context.logger.warning("sockmap join failed, staying in userspace: \(error)")
            return false
        }
        let kernel = SockmapDriver(relay: self, forwarder: forwarder, pair: pair)
        if let previous {
            kernel.toUpstream.bytesForwarded = previous.toUpstream.bytesForwarded
            kernel.toClient.bytesForwarded = previous.toClient.bytesForwarded
            previous.release()
            switchedFrom = previous.datapath
        }
        driver = kernel
        countDatapath()
        updateInterests()
        return true
    }

    // MARK: Events

    func descriptorReady(_ registration: DescriptorRegistration, events: IOEvents) {
        switch phase {
        case .closed:
            return
        case .awaitingHeader:
            readProxyHeader(peerClosed: !events.isDisjoint(with: [.readHangUp, .hangUp, .error]))
        case .connecting:
            if registration === clientRegistration {
                finish(.clientGone)
                return
            }
            let error = (try? SocketCall.option(upstream, level: SOL_SOCKET, name: SO_ERROR)) ?? EIO
            if error != 0 {
                connectFailed(.connectRefused)
            } else {
                connected()
            }
        case .relaying:
            driver?.handle(fd: registration.fd, events: events)
        }
    }

    /// Polls each socket for what the driver wants now; a socket with nothing more to happen
    /// leaves the loop (a hang-up would only spin).
    func updateInterests() {
        guard phase == .relaying, let driver else { return }
        for registration in [clientRegistration, upstreamRegistration] {
            guard let registration else { continue }
            if let interest = driver.interest(of: registration.fd) {
                try? registration.setInterest(interest)
            } else {
                registration.deregister()
            }
        }
    }

    /// Stops polling `fd` (the driver waits for the kernel to flush its bytes before acting on a reset).
    func stopPolling(_ fd: CInt) {
        (fd == client ? clientRegistration : upstreamRegistration)?.deregister()
    }

    /// Ticks every millisecond while the driver waits on the kernel, else at the normal pace.
    func setFastTicks(_ on: Bool) {
        guard on != fastTicking, phase != .closed else { return }
        fastTicking = on
        ticker?.schedule(every: on ? timings.fastTick : timings.tick)
    }

    var isFastTicking: Bool { fastTicking }

    // MARK: Deadlines

    private func tick() {
        let now = loop.now
        switch phase {
        case .closed:
            return
        case .awaitingHeader:
            if now &- startedAt >= settings.config.connectTimeout.wholeNanoseconds { rejectProxyHeader(.timeout, "no whole header within \(settings.config.connectTimeout)") }
        case .connecting:
            if now &- connectStartedAt >= settings.config.connectTimeout.wholeNanoseconds { connectFailed(.connectTimeout) }
        case .relaying:
            driver?.tick(now: now)
            if phase == .relaying, now &- counted.at >= timings.byteReport.wholeNanoseconds, let moved = driver?.movedCounts() {
                reportBytes(moved)
            }
            if phase == .relaying, let idle = settings.config.idleTimeout, now &- lastActivity >= idle.wholeNanoseconds {
                finish(.idleTimeout)
            }
        }
    }

    /// Pumps `direction` (``Direction/pump()``): bytes moved count as activity; a failed read or
    /// write resets from the socket that failed. False after a failure: the relay is closed.
    /// `what` names the direction's datapath in the debug line.
    func pump(_ direction: Direction, _ what: String) -> Bool {
        do {
            if try direction.pump() { lastActivity = loop.now }
            return true
        } catch {
            switch error {
            case .source(let failure):
                context.logger.debug("\(what): reading failed: \(failure)")
                resetFrom(direction.source)
            case .sink(let failure):
                context.logger.debug("\(what): writing failed: \(failure)")
                resetFrom(direction.sink)
            }
            return false
        }
    }

    // MARK: Closing

    /// Bytes written into `sink` since the relay began (TCP: acknowledged plus queued, less the
    /// FIN once sent), or nil if the socket cannot say.
    func writtenBytes(into sink: CInt, finSent: Bool) -> UInt64? {
        guard let counters = try? RelayCall.streamCounters(sink), let queued = try? RelayCall.unacknowledgedBytes(sink) else { return nil }
        let base = sink == upstream ? ackBase.upstream : ackBase.client
        return counters.acked &+ UInt64(queued) &- base &- (finSent ? 1 : 0)
    }

    /// The bytes TCP says `fd` received since it was accepted or connected, less the client's
    /// PROXY header (read here, never forwarded): what a kernel datapath must have delivered to
    /// the other side before a FIN or reset is carried across. Nil if the socket cannot say.
    func receivedBytes(from fd: CInt) -> UInt64? {
        guard let received = try? RelayCall.streamCounters(fd).received else { return nil }
        return fd == client ? received &- headerLength : received
    }

    /// Adds what moved since the last report to `strait_proxy_bytes_total`, labelled by listener,
    /// cluster, upstream and datapath (all from the config, never from clients).
    private func reportBytes(_ moved: (up: UInt64, down: UInt64)) {
        counted.at = loop.now
        guard let upstreamState else { return }
        let labels = ProxyMetrics.TrafficLabels(listener: settings.config.name, cluster: settings.config.cluster, upstream: "\(upstreamState.address)", datapath: datapath)
        context.metrics.addBytes(labels, up: moved.up > counted.up ? moved.up &- counted.up : 0, down: moved.down > counted.down ? moved.down &- counted.down : 0)
        counted.up = max(counted.up, moved.up)
        counted.down = max(counted.down, moved.down)
    }

    /// `fd` reset or failed: reset the other side, close both.
    func resetFrom(_ fd: CInt) {
        finish(fd == client ? .clientReset : .upstreamReset)
    }

    /// Closes everything, logs the connection, updates counters. Idempotent. Loop thread.
    func finish(_ end: RelayEnd) {
        guard phase != .closed else { return }
        phase = .closed
        ticker?.cancel()
        ticker = nil
        home.remove(self)
        clientRegistration?.deregister()
        upstreamRegistration?.deregister()
        clientRegistration = nil
        upstreamRegistration = nil
        let bytes = driver?.finalCounts(end: end) ?? (up: 0, down: 0)
        let shown = datapath
        driver?.release()
        let clientSocket = self.clientSocket.take()
        let upstreamSocket = self.upstreamSocket.take()
        switch end {
        case .clientReset:
            if let upstreamSocket { RelayCall.closeWithReset(upstreamSocket.take()) }
            clientSocket?.close()
        case .upstreamReset:
            if let clientSocket { RelayCall.closeWithReset(clientSocket.take()) }
            upstreamSocket?.close()
        default:
            clientSocket?.close()
            upstreamSocket?.close()
        }
        let shownPath = switchedFrom.map { "auto(\($0)→sockmap)" } ?? (settings.config.datapath == .auto ? "auto(\(shown))" : "\(shown)")
        reportBytes(bytes)  // the rest of the bytes
        context.metrics.connectionClosed(listener: settings.config.name, duration: .nanoseconds(Int64(loop.now &- startedAt)), end: end)
        // After the counters: whoever sees the connection gone sees its bytes counted.
        upstreamState?.active.subtract(1, ordering: .relaxed)
        if let countedDatapath { upstreamState?.datapaths.ended(countedDatapath) }
        listener.releaseSlot()  // a listener paused at `max_connections` accepts again
        context.descriptors.giveBack(DescriptorBudget.descriptors(for: settings.config.datapath))  // its descriptors are closed above
        if context.accessLog.load(ordering: .relaxed) {
            // Queued for the access log's writer thread, never written here.
            context.accessLogWriter.record(AccessEntry(
                time: Date().timeIntervalSince1970, listener: settings.config.name,
                client: clientAddress.map(String.init(describing:)) ?? "?", upstream: upstreamState.map { String(describing: $0.address) } ?? "-",
                datapath: shownPath, bytesUp: bytes.up, bytesDown: bytes.down, durationSeconds: Double(loop.now &- startedAt) / 1e9, end: end.rawValue))
        }
    }
}
