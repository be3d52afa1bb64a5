import Atomics
import Foundation
import StraitNet
import StraitSteer
import StraitSystem

/// A restart of a TCP server under load, measured: a client opens short connections (connect,
/// send 5 bytes, read the echo, close) at a fixed rate while the server is replaced `restarts` times,
/// and every failed connect, reset or short answer is counted.
///
/// The "old" and "new" servers are two StraitNet servers with their own loop groups in this
/// process; the hand-over still goes through a Unix socket with `SCM_RIGHTS`, so the kernel sees
/// exactly what it sees between two processes (new descriptors for the same sockets). Runs inside
/// `namespace`, whose `net.ipv4.tcp_migrate_req` it sets per mode; never on the host.
public enum RestartDrill {
    /// How the old server gives way to the new one.
    public enum Mode: String, Sendable, CaseIterable, Codable {
        /// The new server binds its own SO_REUSEPORT listeners, then the old one closes its listeners.
        /// Whatever was queued on them is reset. No steering program, no migration.
        case closeAndBind = "close-bind"
        /// The old server hands its listeners to the new one (SCM_RIGHTS) and stops accepting; the
        /// kernel's hash steers; no migration.
        case handOver = "fd-hand-over"
        /// The new server binds anew and joins the steering group; the old one leaves it and closes,
        /// and the kernel migrates its queued connections (tcp_migrate_req=1, migrate-aware program).
        case bindAndMigrate = "bind-migrate"
        /// Strait's restart: hand-over of the listeners plus the migrate-aware steering program and
        /// tcp_migrate_req=1, so even listeners that are not carried over lose nothing.
        case strait
    }

    /// One drill's counts; `attempted` = `succeeded` + `failedConnects` + `resets` once the load
    /// has stopped.
    public struct Result: Sendable, Codable {
        /// How the servers were replaced.
        public var mode: Mode
        /// Server replacements done.
        public var restarts: Int
        /// Connections the client started.
        public var attempted: Int
        /// Connections whose 5-byte echo came back whole.
        public var succeeded: Int
        /// connect() failed (refused, timed out).
        public var failedConnects: Int
        /// The connection was reset or closed before the echo came back.
        public var resets: Int
        /// Connections moved by the kernel off a closing listener (steering program's count).
        public var migrated: Int
        /// CPU time the server spun per request before echoing, in microseconds (0: an idle
        /// server).
        public var workMicroseconds: Int
        /// Wall time from the start of the load to its end, in seconds.
        public var seconds: Double

        /// A result as measured or decoded; nothing is checked.
        public init(
            mode: Mode, restarts: Int, attempted: Int, succeeded: Int, failedConnects: Int, resets: Int, migrated: Int,
            workMicroseconds: Int, seconds: Double
        ) {
            self.mode = mode
            self.restarts = restarts
            self.attempted = attempted
            self.succeeded = succeeded
            self.failedConnects = failedConnects
            self.resets = resets
            self.migrated = migrated
            self.workMicroseconds = workMicroseconds
            self.seconds = seconds
        }
    }

    /// Runs one drill. `loops` listeners per server; restarts are spaced evenly over the run.
    /// `workMicroseconds` of CPU per request on the server models a busy server, whose accept
    /// queues are not always empty when a restart closes a listener.
    public static func run(
        mode: Mode, restarts: Int, connectionsPerSecond: Int, workMicroseconds: Int = 0, loops: Int = 2,
        interval: Duration = .milliseconds(100), namespace: NetworkNamespace, controlDirectory: String
    ) async throws -> Result {
        let handlers = ServerGeneration.echo(workMicroseconds: workMicroseconds)
        let migrate = mode == .bindAndMigrate || mode == .strait
        try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, migrate ? "1" : "0") }
        let steering: SteeringGroup? = migrate ? try SteeringGroup(policy: .consistentHash(.fourTuple)) : nil
        defer { steering?.close() }

        var generation = try namespace.run { try ServerGeneration.start(address: .loopback(port: 0), loops: loops, steering: steering, handlers: handlers) }
        let port = generation.server.address.port!
        let load = ClientLoad(port: port, rate: connectionsPerSecond, threads: 2)
        let started = ContinuousClock.now
        let loadDone = ManagedAtomic<Bool>(false)
        Thread.detachNewThread {
            _ = try? namespace.run { load.run() }
            loadDone.store(true, ordering: .releasing)
        }
        // Waits by polling, never by blocking a concurrency thread on something it would have to run.
        func waitForLoad() async {
            while !loadDone.load(ordering: .acquiring) { try? await Task.sleep(for: .milliseconds(5)) }
        }
        var retiring: [ServerGeneration] = []
        do {
            try await Task.sleep(for: interval)
            for restart in 0..<restarts {
                let old = generation
                switch mode {
                case .closeAndBind, .bindAndMigrate:
                    generation = try namespace.run {
                        try ServerGeneration.start(address: .loopback(port: port), loops: loops, steering: steering, handlers: handlers)
                    }
                    if mode == .bindAndMigrate { for fd in old.server.listenerDescriptors { try steering?.memberLeaving(fd) } }
                    old.retire()
                case .handOver, .strait:
                    let path = "\(controlDirectory)/handover-\(getpid())-\(restart).sock"
                    let offer = try ListenerHandOver.Offer(
                        path: path, package: { ListenerHandOver.Package(listeners: old.server.listenerDescriptors) },
                        stopAccepting: { old.server.stopAccepting(); old.retire() })
                    defer { offer.close() }
                    let receipt = try ListenerHandOver.take(from: path)
                    generation = try ServerGeneration.start(adopting: receipt.adoptListeners(), loops: loops, handlers: handlers)
                    try receipt.confirm()
                }
                retiring.append(old)
                try await Task.sleep(for: interval)
            }
        } catch {
            load.stop()
            await waitForLoad()
            for old in retiring { await old.waitRetired() }
            await generation.stopNow()
            throw error
        }
        load.stop()
        await waitForLoad()
        let seconds = (ContinuousClock.now - started).seconds
        for old in retiring { await old.waitRetired() }
        await generation.stopNow()
        return Result(
            mode: mode, restarts: restarts, attempted: load.attempted.load(ordering: .relaxed),
            succeeded: load.succeeded.load(ordering: .relaxed), failedConnects: load.failedConnects.load(ordering: .relaxed),
            resets: load.resets.load(ordering: .relaxed), migrated: (try? steering?.counters().migrated) ?? 0,
            workMicroseconds: workMicroseconds, seconds: seconds)
    }
}

/// One server generation: its loop group and echo server, and how it goes away.
final class ServerGeneration: @unchecked Sendable {
    let group: EventLoopGroup
    let server: Server
    private var retirement: Task<Void, Never>?

    private init(group: EventLoopGroup, server: Server) {
        self.group = group
        self.server = server
    }

    /// Echoes what arrives, after spinning `workMicroseconds` on the loop.
    static func echo(workMicroseconds: Int) -> ConnectionHandlers {
        ConnectionHandlers(onRequest: { connection in
            if workMicroseconds > 0 {
                let end = SocketCall.monotonicNanoseconds() + UInt64(workMicroseconds) * 1000
                while SocketCall.monotonicNanoseconds() < end {}
            }
            connection.writer.append(connection.reader)
            connection.flush()
        })
    }

    static func start(address: SocketAddress, loops: Int, steering: SteeringGroup?, handlers echo: ConnectionHandlers) throws -> ServerGeneration {
        let group = try EventLoopGroup(loopCount: loops)
        do {
            var configuration = ServerConfiguration()
            configuration.backlog = 4096
            let server = try Server.reusePortGroup(address: address, group: group, steering: steering, configuration: configuration, handlers: echo)
            return ServerGeneration(group: group, server: server)
        } catch {
            group.shutdown()
            throw error
        }
    }

    static func start(adopting listeners: [Listener], loops: Int, handlers echo: ConnectionHandlers) throws -> ServerGeneration {
        let group = try EventLoopGroup(loopCount: max(loops, listeners.count))
        do {
            var configuration = ServerConfiguration()
            configuration.backlog = 4096
            let server = try Server(listeners: listeners, group: group, configuration: configuration, handlers: echo)
            return ServerGeneration(group: group, server: server)
        } catch {
            for listener in listeners { listener.close() }
            group.shutdown()
            throw error
        }
    }

    /// Stops accepting (closing its listener descriptors) and drains in the background, the same
    /// way in every mode, so the modes differ only in what happens to the listening sockets.
    func retire() {
        retirement = Task { [self] in
            await server.drain(idleGrace: .milliseconds(300), deadline: .seconds(2))
            group.shutdown()
        }
    }

    func waitRetired() async { await retirement?.value }

    func stopNow() async {
        await server.shutdown(gracePeriod: .seconds(1))
        group.shutdown()
    }
}

/// Short TCP connections (connect, send 5 bytes, read the echo, close) to 127.0.0.1:`port` at a
/// fixed rate from a few blocking client threads, counting each failure.
public final class ClientLoad: @unchecked Sendable {
    let port: UInt16
    let rate: Int
    let threads: Int
    /// Connections started so far; the counters are updated by the client threads with relaxed
    /// ordering, so read them after ``stop()`` and `run()` has returned for exact totals.
    public let attempted = ManagedAtomic<Int>(0)
    /// Connections whose echo came back whole.
    public let succeeded = ManagedAtomic<Int>(0)
    /// Connections whose socket() or connect() failed (refused, or no answer within 2 s).
    public let failedConnects = ManagedAtomic<Int>(0)
    /// Connections reset, closed or answered wrongly before the whole echo came back (a short or
    /// wrong answer counts here too).
    public let resets = ManagedAtomic<Int>(0)
    private let stopping = ManagedAtomic<Bool>(false)

    /// A load of `rate` connections per second to 127.0.0.1:`port`, spread over `threads` blocking
    /// threads; nothing starts until ``run()``.
    public init(port: UInt16, rate: Int, threads: Int) {
        self.port = port
        self.rate = rate
        self.threads = threads
    }

    /// Asks the client threads to stop after their current connection (each takes at most about 2
    /// s, its socket timeout); ``run()`` returns once all have.
    public func stop() { stopping.store(true, ordering: .relaxed) }

    /// Runs until ``stop()``; call on a thread inside the server's namespace. Client threads are
    /// started from here so they inherit the namespace.
    public func run() {
        let group = DispatchGroup()
        for _ in 0..<threads {
            group.enter()
            let thread = Thread { [self] in
                defer { group.leave() }
                let period = Double(threads) / Double(rate)
                var next = Date().timeIntervalSinceReferenceDate
                while !stopping.load(ordering: .relaxed) {
                    oneConnection()
                    next += period
                    let wait = next - Date().timeIntervalSinceReferenceDate
                    if wait > 0 { Thread.sleep(forTimeInterval: wait) }
                }
            }
            thread.start()
        }
        group.wait()
    }

    private func oneConnection() {
        attempted.wrappingIncrement(ordering: .relaxed)
        guard let fd = try? SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false) else {
            failedConnects.wrappingIncrement(ordering: .relaxed)
            return
        }
        defer { closeDescriptor(fd) }
        try? SocketCall.setTimeouts(fd, seconds: 2)
        guard (try? SocketCall.connect(fd, to: .loopback(port: port))) != nil else { failedConnects.wrappingIncrement(ordering: .relaxed); return }
        let request: [UInt8] = Array("ping\n".utf8)
        guard (try? request.withUnsafeBytes({ try SocketCall.send(fd, $0) })) == request.count else {
            resets.wrappingIncrement(ordering: .relaxed)
            return
        }
        var answer = [UInt8](repeating: 0, count: request.count)
        var got = 0
        while got < answer.count {
            let count = (try? answer.withUnsafeMutableBytes { try SocketCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[got...])) }) ?? 0
            if count <= 0 { break }
            got += count
        }
        if got == request.count && answer == request {
            succeeded.wrappingIncrement(ordering: .relaxed)
        } else {
            resets.wrappingIncrement(ordering: .relaxed)
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
