import Atomics
import Logging
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How a ``Server`` accepts and runs connections.
public struct ServerConfiguration: Sendable {
    /// Limits, deadlines and where handlers run, for every accepted connection.
    public var connection = ConnectionOptions()
    /// One `SO_REUSEPORT` listener per loop, each accepting into its own loop, instead of one main
    /// reactor spreading connections over all loops. TCP only.
    public var reusePort = false
    /// The kernel's accept-queue length for each listener (`listen(2)`'s backlog): connections past
    /// it wait in SYN retries, so size it for the bursts a server must absorb.
    public var backlog = 1024
    /// Where the server reports accept failures and drops; swift-log's default handler unless set.
    public var logger = Logger(label: "strait.net.server")

    /// One listener, backlog 1024, no `SO_REUSEPORT`.
    public init() {}
}

/// Accepts connections and runs ``ConnectionHandlers`` on them.
///
/// The main reactor (the listener's loop) accepts each socket and adds it with `epoll_ctl` straight
/// to the epoll set of the next loop in the group: no queue between the two. That loop picks it up
/// on the socket's first (writable) event. With ``ServerConfiguration/reusePort`` every loop has its
/// own listener instead.
///
/// The server owns its listeners and closes them when ``shutdown(gracePeriod:)`` starts. Call
/// `shutdown` before the group's; a server still running when its group stops has its connections
/// closed with ``CloseReason/shutdown``.
public final class Server: ConnectionOwner, @unchecked Sendable {
    /// The loops the server's acceptors and connections run on. The server does not own the group:
    /// shut the server down before the group.
    public let group: EventLoopGroup
    /// The address the server listens on (with the kernel's port when port 0 was asked for).
    public let address: SocketAddress
    let configuration: ServerConfiguration
    let handlers: ConnectionHandlers
    var acceptors: [Acceptor] = []
    private let live = ManagedAtomic<Int>(0)
    private let drainingFlag = ManagedAtomic<Bool>(false)
    /// Acceptors whose listener is closed (and, for a Unix socket, its path removed): `shutdown`
    /// returns only once all are, so a caller that sees it return may reuse the address.
    private let stoppedAcceptors = ManagedAtomic<Int>(0)
    private let refusedCount = ManagedAtomic<Int>(0)
    private let acceptBackoffCount = ManagedAtomic<Int>(0)

    /// Binds `address` (TCP) and starts accepting.
    public convenience init(
        address: SocketAddress, group: EventLoopGroup, configuration: ServerConfiguration = ServerConfiguration(),
        handlers: ConnectionHandlers
    ) throws(SystemCallError) {
        var listeners: [Listener] = []
        do {
            if configuration.reusePort {
                let first = try Listener.tcp(address, reusePort: true, backlog: configuration.backlog)
                listeners.append(first)
                for _ in 1..<group.loops.count {
                    listeners.append(try Listener.tcp(first.address, reusePort: true, backlog: configuration.backlog))
                }
            } else {
                listeners.append(try Listener.tcp(address, backlog: configuration.backlog))
            }
        } catch {
            for listener in listeners { listener.close() }
            throw error
        }
        try self.init(listeners: listeners, group: group, configuration: configuration, handlers: handlers)
    }

    /// Starts accepting on listeners made by the caller (a Unix socket, say). With one listener
    /// the main reactor spreads connections over the group; with one per loop, listener `i`
    /// accepts into loop `i`. The server takes ownership of the listeners.
    public init(
        listeners: [Listener], group: EventLoopGroup, configuration: ServerConfiguration = ServerConfiguration(),
        handlers: ConnectionHandlers
    ) throws(SystemCallError) {
        precondition(!listeners.isEmpty && listeners.count <= group.loops.count, "one listener, or at most one per loop")
        self.group = group
        self.address = listeners[0].address
        self.configuration = configuration
        self.handlers = handlers
        let spread = listeners.count == 1
        for (index, listener) in listeners.enumerated() {
            let loop = spread ? group.next() : group.loops[index]
            acceptors.append(Acceptor(listener: listener, loop: loop, server: self, spreadOverGroup: spread))
        }
        for (index, acceptor) in acceptors.enumerated() {
            do {
                try acceptor.loop.register(acceptor, events: EpollCall.input | EpollCall.edgeTriggered)
            } catch {
                for started in acceptors[..<index] { started.loop.execute { started.stop() } }
                for unstarted in acceptors[index...] { unstarted.listener.close() }
                throw error
            }
        }
    }

    /// Connections accepted and not yet closed. Safe from any thread.
    public var connectionCount: Int { live.load(ordering: .relaxed) }

    var isDraining: Bool { drainingFlag.load(ordering: .relaxed) }

    func connectionOpened() { live.wrappingIncrement(ordering: .relaxed) }

    func connectionClosed(_ connection: Connection) {
        switch connection.closeReason {
        case .inputLimit, .handlerFailed: refusedCount.wrappingIncrement(ordering: .relaxed)
        default: break
        }
        live.wrappingDecrement(ordering: .relaxed)
    }

    /// Connections closed for breaking a limit or the protocol: a request that did not fit the input
    /// limit (``CloseReason/inputLimit``), or a handler that threw (a frame above the frame limit,
    /// ``CloseReason/handlerFailed(_:)``). Safe from any thread.
    public var refusedConnections: Int { refusedCount.load(ordering: .relaxed) }

    /// Times accepting paused because the process or system was out of descriptors
    /// (`EMFILE`/`ENFILE`). Safe from any thread.
    public var acceptBackoffs: Int { acceptBackoffCount.load(ordering: .relaxed) }

    func acceptBackedOff() { acceptBackoffCount.wrappingIncrement(ordering: .relaxed) }

    /// Graceful shutdown: stop accepting at once; close idle connections; let running handlers
    /// finish and their output go out; after `gracePeriod`, close whatever is left. Returns when
    /// every connection of this server and every listener is closed (a Unix socket's path removed),
    /// so the caller may bind the address again.
    public func shutdown(gracePeriod: Duration) async {
        guard !drainingFlag.exchange(true, ordering: .relaxed) else { return await waitForConnections(until: .now + .seconds(5)) }
        for acceptor in acceptors {
            acceptor.loop.execute { [stoppedAcceptors] in
                acceptor.stop()
                stoppedAcceptors.wrappingIncrement(ordering: .releasing)
            }
        }
        for loop in group.loops {
            loop.execute { [self] in loop.forEachConnection { if $0.owner === self { $0.beginDrain() } } }
        }
        await waitForConnections(until: .now + gracePeriod)
        if connectionCount > 0 {
            for loop in group.loops {
                loop.execute { [self] in loop.forEachConnection { if $0.owner === self { $0.close(reason: .shutdown) } } }
            }
            await waitForConnections(until: .now + .seconds(5))
        }
        await waitForAcceptors(until: .now + .seconds(5))
    }

    /// Waits (bounded) for every acceptor's `stop()` to have run on its loop.
    private func waitForAcceptors(until deadline: ContinuousClock.Instant) async {
        while stoppedAcceptors.load(ordering: .acquiring) < acceptors.count && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    private func waitForConnections(until deadline: ContinuousClock.Instant) async {
        while connectionCount > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(2))
        }
    }
}

/// A listening socket on a loop: the main reactor. State is confined to its loop.
final class Acceptor: Selectable, @unchecked Sendable {
    let listener: Listener
    unowned let server: Server
    let spreadOverGroup: Bool
    private var stopped = false
    private var retryScheduled = false
    /// Accepting failed and has not succeeded since (logged once per episode).
    private var inBackoff = false

    init(listener: Listener, loop: EventLoop, server: Server, spreadOverGroup: Bool) {
        self.listener = listener
        self.server = server
        self.spreadOverGroup = spreadOverGroup
        super.init(fd: listener.fd, loop: loop)
    }

    override func handleEvents(_ events: UInt32) {
        acceptAll()
    }

    /// Accepts until the backlog is empty. Out of descriptors (`EMFILE`/`ENFILE`), it retries in
    /// 10 ms rather than spinning: with edge-triggered polling no new event would come.
    private func acceptAll() {
        while !stopped {
            let fd: CInt
            do {
                guard case .done(let accepted) = try EpollCall.accept(listener.fd) else { return }
                fd = accepted
            } catch {
                // Out of descriptors, or another failure: retry in 10 ms rather than spin (edge
                // triggered, no new event would come). One log line per episode, each counted.
                if !inBackoff {
                    inBackoff = true
                    server.configuration.logger.warning("accept failed on \(listener.address): \(error); retrying every 10 ms until it succeeds")
                }
                if !retryScheduled {
                    retryScheduled = true
                    server.acceptBackedOff()
                    loop.schedule(after: .milliseconds(10)) { [self] in
                        retryScheduled = false
                        acceptAll()
                    }
                }
                return
            }
            if inBackoff {
                inBackoff = false
                server.configuration.logger.info("accepting again on \(listener.address)")
            }
            let options = server.configuration.connection
            if options.noDelay, case .ip = listener.address {
                try? SocketCall.setOption(fd, level: CInt(IPPROTO_TCP), name: EpollCall.tcpNoDelay, value: 1)
            }
            let target = spreadOverGroup ? server.group.next() : loop
            let connection = Connection(fd: fd, loop: target, state: .registered, options: options, handlers: server.handlers, owner: server)
            server.connectionOpened()
            do {
                try target.register(connection, events: Connection.pollEvents)
            } catch {
                server.configuration.logger.warning("registering an accepted socket failed: \(error)")
                closeDescriptor(fd)
                server.connectionClosed(connection)
            }
        }
    }

    /// Stops accepting and closes the listener. Loop only.
    func stop() {
        guard !stopped else { return }
        stopped = true
        loop.deregisterAndClose(self)
        listener.unlinkPath()
    }
}

extension Connection {
    /// Every connection is polled edge-triggered for input, output and peer hang-up, registered
    /// once and never modified: no `epoll_ctl` per request.
    static let pollEvents = EpollCall.input | EpollCall.output | EpollCall.peerHangUp | EpollCall.edgeTriggered
}
