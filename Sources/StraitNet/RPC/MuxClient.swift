import Atomics
import StraitSystem
import Synchronization

/// A client that carries many concurrent requests over one connection (see ``Frame`` for the
/// wire format): each call gets a fresh id, responses are matched by id in whatever order they
/// come, and each call has its own timeout.
///
/// All bookkeeping (the table of calls in flight, the timeout sweep) lives on the connection's
/// loop; callers on other threads or tasks only hand a request over. A call made on the loop (from
/// a completion, say) is written at once, and calls made while a burst of responses is being
/// read go out together in one `writev` at the end of the burst. A call costs the response's
/// array (nothing with ``call(_:timeout:borrowingResponse:)``), plus the hand-over closure when
/// made off the loop and the continuation for the async face.
///
/// Timeouts cost no timer per call: one timer per client fires at the earliest deadline in flight,
/// fails the calls that are due and re-arms for the next (a scan of the calls in flight, about once
/// per timeout period when calls finish in time).
///
/// The client owns its connection: ``close()`` closes it, failing calls in flight with
/// ``NetError/closed(_:)``. Its loop-confined state is `@exclusivity(unchecked)`, as in ``LinkBuffer``.
public final class MuxClient: TimerTarget, @unchecked Sendable {
    /// What to call with a response: a copy of the payload, or a view of it.
    enum Completion {
        case owned(@Sendable (Result<[UInt8], NetError>) -> Void)
        case borrowed(@Sendable (Result<UnsafeRawBufferPointer, NetError>) -> Void)

        func fail(_ error: NetError) {
            switch self {
            case .owned(let completion): completion(.failure(error))
            case .borrowed(let completion): completion(.failure(error))
            }
        }
    }

    struct Pending {
        let deadline: UInt64
        let completion: Completion
    }

    /// The loop the client's connection runs on: every completion is called there, so a completion
    /// must not block.
    public let loop: EventLoop
    let maximumLength: Int
    @exclusivity(unchecked) private var connection: Connection?
    @exclusivity(unchecked) private var pending: [UInt64: Pending] = [:]
    @exclusivity(unchecked) private var nextID: UInt64 = 0
    /// Deadline of the sweep timer that counts (earlier heap entries were superseded); `.max`: none.
    @exclusivity(unchecked) private var sweepDeadline = UInt64.max
    /// True while `readResponses` runs: calls made then are flushed once, at its end.
    @exclusivity(unchecked) private var readingResponses = false
    @exclusivity(unchecked) private var closedReason: CloseReason?
    private let closedFlag = ManagedAtomic<Bool>(false)

    private init(loop: EventLoop, maximumLength: Int) {
        self.loop = loop
        self.maximumLength = maximumLength
        pending.reserveCapacity(256)
    }

    /// Connects to a ``FrameServer``.
    public static func connect(
        to address: SocketAddress, dialer: Dialer, timeout: Duration = .seconds(5), maximumLength: Int = Frame.defaultMaximumLength
    ) async throws(NetError) -> MuxClient {
        let holder = Mutex<MuxClient?>(nil)
        let handlers = ConnectionHandlers(
            onRequest: { connection in
                guard let client = holder.withLock({ $0 }) else { return }
                try client.readResponses(from: connection)
            },
            onDisconnect: { _, reason in holder.withLock { $0 }?.connectionClosed(reason) })
        var options = dialer.options
        options.execution = .onLoop
        let connection = try await Dialer(group: dialer.group, options: options).connect(to: address, timeout: timeout, handlers: handlers)
        let client = MuxClient(loop: connection.loop, maximumLength: maximumLength)
        client.connection = connection
        holder.withLock { $0 = client }
        if !connection.isActive {
            // It closed before the client was attached: record that on the loop.
            connection.loop.execute { client.connectionClosed(connection.closeReason ?? .local) }
        }
        return client
    }

    /// False once the connection closed. Safe from any thread.
    public var isActive: Bool { !closedFlag.load(ordering: .relaxed) }

    /// Sends `payload` and calls `completion` on the loop with the response payload, or with
    /// ``NetError/timeout``, ``NetError/closed(_:)``, or ``NetError/protocolViolation(_:)`` (an error
    /// frame's message).
    public func call(_ payload: [UInt8], timeout: Duration, completion: @escaping @Sendable (Result<[UInt8], NetError>) -> Void) {
        start(payload, timeout: timeout, completion: .owned(completion))
    }

    /// Like ``call(_:timeout:completion:)``, but the response payload comes as a view into the
    /// connection's input, valid only until `completion` returns (copy what must outlive it): no
    /// allocation for the response. Made on the loop with a completion closure created once, a
    /// call allocates nothing once warm.
    public func call(_ payload: [UInt8], timeout: Duration, borrowingResponse completion: @escaping @Sendable (Result<UnsafeRawBufferPointer, NetError>) -> Void) {
        start(payload, timeout: timeout, completion: .borrowed(completion))
    }

    private func start(_ payload: [UInt8], timeout: Duration, completion: Completion) {
        let deadline = SocketCall.monotonicNanoseconds() + timeout.nanoseconds
        if loop.inEventLoop {
            send(payload, deadline: deadline, completion: completion)
        } else {
            loop.execute { [self] in send(payload, deadline: deadline, completion: completion) }
        }
    }

    /// Writes the request frame and flushes it, unless a burst of responses is being read (then
    /// `readResponses` flushes once at its end). Loop only.
    private func send(_ payload: [UInt8], deadline: UInt64, completion: Completion) {
        guard let connection, closedReason == nil else {
            completion.fail(.closed(closedReason ?? .local))
            return
        }
        nextID &+= 1
        let id = nextID
        pending[id] = Pending(deadline: deadline, completion: completion)
        payload.withUnsafeBytes { Frame.write(id: id, kind: .request, payload: $0, to: connection.writer) }
        if !readingResponses { connection.flush() }
        armSweep(at: deadline)
    }

    /// The async face of ``call(_:timeout:completion:)``.
    public func call(_ payload: [UInt8], timeout: Duration) async throws(NetError) -> [UInt8] {
        let result = await withCheckedContinuation { continuation in
            call(payload, timeout: timeout, completion: { continuation.resume(returning: $0) })
        }
        return try result.get()
    }

    /// Closes the connection; calls in flight fail with ``NetError/closed(_:)``. Any thread.
    public func close() {
        connection?.close()
    }

    private func readResponses(from connection: Connection) throws(NetError) {
        let reader = connection.reader
        readingResponses = true
        defer {
            readingResponses = false
            connection.flush()
        }
        while let header = try Frame.next(in: reader, maximumLength: Frame.maximumLength(maximumLength, for: connection)) {
            guard let call = pending.removeValue(forKey: header.id) else {
                try! reader.skip(header.payloadLength)  // timed out already
                continue
            }
            switch header.kind {
            case .response:
                switch call.completion {
                case .owned(let completion): completion(.success(try! reader.readBinary(header.payloadLength)))
                case .borrowed(let completion): completion(.success(try! reader.next(header.payloadLength)))
                }
            case .error: call.completion.fail(.protocolViolation(try! reader.readString(header.payloadLength)))
            case .request:
                call.completion.fail(.protocolViolation("a server sent a request frame"))
                throw .protocolViolation("a server sent a request frame")
            }
        }
    }

    private func connectionClosed(_ reason: CloseReason) {
        closedReason = reason
        closedFlag.store(true, ordering: .relaxed)
        let failed = pending
        pending.removeAll()
        for call in failed.values { call.completion.fail(.closed(reason)) }
    }

    /// Makes sure the sweep runs by `deadline`. Loop only; a heap entry only when `deadline` is
    /// earlier than the armed one (never, when every call has the same timeout).
    private func armSweep(at deadline: UInt64) {
        guard deadline < sweepDeadline else { return }
        sweepDeadline = deadline
        loop.schedule(at: deadline, target: self, tag: deadline)
    }

    /// Fails the calls whose deadline passed and re-arms for the earliest one left.
    func timerFired(tag: UInt64) {
        guard tag == sweepDeadline else { return }  // superseded by an earlier deadline
        sweepDeadline = .max
        let now = loop.now
        var earliest = UInt64.max
        var expired: [UInt64] = []
        for (id, call) in pending {
            if call.deadline <= now {
                expired.append(id)
            } else {
                earliest = min(earliest, call.deadline)
            }
        }
        if earliest != .max { armSweep(at: earliest) }
        for id in expired {
            pending.removeValue(forKey: id)?.completion.fail(.timeout)
        }
    }
}

/// A small, fixed set of ``MuxClient``s to one address, used round robin; a client whose connection
/// closed is replaced on next use. The pool owns its clients: ``close()`` closes them.
public final class MuxPool: Sendable {
    /// Where every client of the pool connects.
    public let address: SocketAddress
    let dialer: Dialer
    let connectTimeout: Duration
    private let clients: Mutex<[MuxClient?]>
    private let cursor = ManagedAtomic<Int>(0)

    /// A pool of `size` clients to `address`, opened with `dialer` on first use (none connects here).
    public init(address: SocketAddress, dialer: Dialer, size: Int = 4, connectTimeout: Duration = .seconds(5)) {
        precondition(size > 0)
        self.address = address
        self.dialer = dialer
        self.connectTimeout = connectTimeout
        self.clients = Mutex(Array(repeating: nil, count: size))
    }

    /// A call on the next client in turn (connecting it first when needed).
    public func call(_ payload: [UInt8], timeout: Duration) async throws(NetError) -> [UInt8] {
        try await client().call(payload, timeout: timeout)
    }

    func client() async throws(NetError) -> MuxClient {
        let slot = cursor.loadThenWrappingIncrement(ordering: .relaxed) % clients.withLock { $0.count }
        if let existing = clients.withLock({ $0[slot] }), existing.isActive { return existing }
        let fresh = try await MuxClient.connect(to: address, dialer: dialer, timeout: connectTimeout)
        let chosen = clients.withLock { clients -> MuxClient in
            if let raced = clients[slot], raced.isActive { return raced }
            clients[slot] = fresh
            return fresh
        }
        if chosen !== fresh { fresh.close() }
        return chosen
    }

    /// Closes every client; calls in flight fail with ``NetError/closed(_:)``.
    public func close() {
        for client in clients.withLock({ $0 }) { client?.close() }
    }
}
