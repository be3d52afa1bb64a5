import Atomics
import StraitSystem
import SystemPackage
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Who accepted or dialed a connection and wants to hear when it closes (a ``Server``).
protocol ConnectionOwner: AnyObject, Sendable {
    var isDraining: Bool { get }
    func connectionClosed(_ connection: Connection)
}

/// A non-blocking stream socket polled by one ``EventLoop``, with a ``LinkBuffer`` on each side.
///
/// The loop reads into ``reader`` (edge-triggered, until the socket is empty or the input limit is
/// reached) and calls `onRequest`; the handler writes to ``writer`` and calls ``flush()``, which
/// sends at once from the loop with `writev` over the buffer's nodes. Whatever the kernel does not
/// take waits for the next writable edge.
///
/// **Threads.** Connection state is confined to its loop's thread. With
/// ``HandlerExecution/workerPool(_:)`` the handler runs on a pool thread while the loop keeps its
/// hands off ``reader`` and the handler's ``writer`` (a staging buffer whose flushed bytes are handed
/// to the loop under a lock). ``send(_:)`` and ``close()`` may be called from any thread.
///
/// **Ownership.** The loop holds the connection from registration until it closes; the socket is
/// closed exactly once, by ``close()`` or by the reason in `onDisconnect`.
///
/// Loop-confined state is `@exclusivity(unchecked)`, as in ``LinkBuffer``.
public final class Connection: Selectable, TimerTarget, @unchecked Sendable {
    enum State { case connecting, registered, active, closed }

    /// Bytes from the peer. Read it in `onRequest` (or on the loop); views it returns are valid
    /// until the handler returns.
    public let reader = LinkBuffer()
    /// The loop's queue of bytes not yet taken by the kernel.
    let output = LinkBuffer()
    /// The worker-pool handler's writer; nil when handlers run on the loop.
    private let staging: LinkBuffer?
    /// Bytes handed over by other threads, moved to `output` on the loop. Guarded by `outboxLock`,
    /// whose value says a drain task is already queued.
    private let outbox = LinkBuffer()
    private let outboxLock = Mutex<Bool>(false)

    /// The options the connection was opened with (limits, watermarks, timeouts); fixed for its life.
    public let options: ConnectionOptions
    let handlers: ConnectionHandlers
    let owner: (any ConnectionOwner)?
    /// Per-connection state for the handler (a parser, a session). Loop or handler only.
    public var context: AnyObject?

    @exclusivity(unchecked) var state: State
    private let closedFlag = ManagedAtomic<Bool>(false)
    /// Why it closed, once closed. Loop thread (or after `onDisconnect`) only.
    @exclusivity(unchecked) public private(set) var closeReason: CloseReason?
    @exclusivity(unchecked) private var pendingClose: CloseReason?
    @exclusivity(unchecked) private var inputEnded = false
    @exclusivity(unchecked) private var readPaused = false
    @exclusivity(unchecked) private var writeBlocked = false
    @exclusivity(unchecked) private var writeBlockedSince: UInt64 = 0
    @exclusivity(unchecked) private var writeTimerArmed = false
    @exclusivity(unchecked) private var aboveHighWatermark = false
    @exclusivity(unchecked) var inDispatch = false
    @exclusivity(unchecked) var handlerRunning = false
    @exclusivity(unchecked) private var handlerFailure: String?
    @exclusivity(unchecked) var draining = false
    @exclusivity(unchecked) private var lastReadAt: UInt64 = 0
    /// The peer's FIN or an error was reported: read to the end, never stop at a short read.
    @exclusivity(unchecked) private var peerHungUp = false
    /// Half-closure and back-pressure state (Connection+HalfClose.swift).
    @exclusivity(unchecked) var readingPaused = false
    @exclusivity(unchecked) var inputClosedDelivered = false
    @exclusivity(unchecked) var outputShutdownPending = false
    @exclusivity(unchecked) var outputShut = false
    /// What the next read offers the kernel: ``ConnectionOptions/readChunk`` and up, adapting.
    @exclusivity(unchecked) private var readSize: Int
    @exclusivity(unchecked) var connectCompletion: (@Sendable (Result<Connection, NetError>) -> Void)?

    @exclusivity(unchecked) var nextOnLoop: Connection?
    @exclusivity(unchecked) unowned(unsafe) var previousOnLoop: Connection?

    init(fd: CInt, loop: EventLoop, state: State, options: ConnectionOptions, handlers: ConnectionHandlers, owner: (any ConnectionOwner)?) {
        self.state = state
        self.options = options
        self.handlers = handlers
        self.owner = owner
        self.readSize = options.readChunk
        if case .workerPool = options.execution { staging = LinkBuffer() } else { staging = nil }
        super.init(fd: fd, loop: loop)
    }

    /// Where the handler writes: stage bytes, then ``flush()``.
    public var writer: LinkBuffer { staging ?? output }

    /// False once closed. Safe from any thread.
    public var isActive: Bool { !closedFlag.load(ordering: .relaxed) }

    /// Unsent output bytes (loop only).
    public var pendingOutputBytes: Int { output.readableBytes }

    // MARK: Writing

    /// Makes the writer's staged bytes readable and sends them: at once with `writev` on the loop,
    /// or by handing the nodes to the loop (no copy) from a worker-pool handler.
    public func flush() {
        if let staging {
            staging.flush()
            if staging.readableBytes > 0 { handOver(staging) }
        } else {
            precondition(loop.inEventLoop, "Connection.writer is the loop's; from other threads use send(_:)")
            output.flush()
            sendOutput()
        }
    }

    /// Sends `buffer`'s bytes (staged ones included) after everything sent before, moving its nodes
    /// (no copy). Safe from any thread; off the loop it costs one lock and, when the loop sleeps,
    /// one eventfd write. Bytes sent to a closed connection are dropped.
    public func send(_ buffer: LinkBuffer) {
        buffer.flush()
        if loop.inEventLoop && !(handlerRunning && staging != nil) {
            output.append(buffer)
            output.flush()
            sendOutput()
        } else {
            handOver(buffer)
        }
    }

    private func handOver(_ buffer: LinkBuffer) {
        let scheduleDrain = outboxLock.withLock { drainQueued in
            outbox.append(buffer)
            outbox.flush()
            defer { drainQueued = true }
            return !drainQueued
        }
        if scheduleDrain { loop.enqueue(.drainOutbox(self)) }
    }

    func drainOutbox() {
        outboxLock.withLock { drainQueued in
            output.append(outbox)
            output.flush()
            drainQueued = false
        }
        if state == .closed {
            output.removeAll()
        } else {
            sendOutput()
        }
    }

    /// Writes `output` until it is empty or the socket is full. Loop only.
    func sendOutput() {
        guard state == .active else { return }
        if outputShut {
            output.removeAll()
            return
        }
        while output.readableBytes > 0 && !writeBlocked {
            do {
                if case .wouldBlock = try output.write(to: fd) {
                    writeBlocked = true
                    writeBlockedSince = loop.now
                    armWriteTimer()
                }
            } catch {
                close(reason: CloseReason(error))
                return
            }
        }
        let pending = output.readableBytes
        if !aboveHighWatermark && pending > options.outputHighWatermark {
            aboveHighWatermark = true
        } else if aboveHighWatermark && pending <= options.outputLowWatermark {
            aboveHighWatermark = false
            if readPaused && !inDispatch { loop.enqueue(.dispatch(self)) }
        }
        if pending == 0, let reason = pendingClose {
            close(reason: reason)
        } else if pending == 0 && outputShutdownPending {
            finishShutdownOutput()
        }
    }

    // MARK: Closing

    /// Closes after the bytes already flushed are sent, with reason ``CloseReason/local``.
    /// Safe from any thread.
    public func close() {
        if loop.inEventLoop {
            closeWhenFlushed(.local)
        } else {
            loop.execute { [self] in closeWhenFlushed(.local) }
        }
    }

    func closeWhenFlushed(_ reason: CloseReason) {
        guard state != .closed else { return }
        guard state == .active, output.readableBytes > 0 else {
            close(reason: reason)
            return
        }
        if pendingClose == nil { pendingClose = reason }
    }

    /// Closes now: the socket, the loop's registration, the buffers; then `onDisconnect`. Loop only.
    func close(reason: CloseReason) {
        guard state != .closed else { return }
        let wasActive = state == .active
        state = .closed
        closeReason = reason
        closedFlag.store(true, ordering: .relaxed)
        loop.unlink(self)
        loop.deregisterAndClose(self)
        // A handler still holding views into the buffers frees them when it returns.
        if !handlerRunning && !inDispatch { releaseBuffers() }
        if let completion = connectCompletion {
            connectCompletion = nil
            completion(.failure(.closed(reason)))
        } else if wasActive {
            handlers.onDisconnect?(self, reason)
        }
        owner?.connectionClosed(self)
    }

    private func releaseBuffers() {
        reader.removeAll()
        output.removeAll()
        staging?.removeAll()
        outboxLock.withLock { _ in outbox.removeAll() }
    }

    /// Server shutdown: stop reading; close once the running handler is done and output is sent.
    func beginDrain() {
        guard state != .closed else { return }
        draining = true
        if !handlerRunning { closeWhenFlushed(.shutdown) }
    }

    // MARK: Events

    override func handleEvents(_ events: UInt32) {
        switch state {
        case .closed:
            return
        case .connecting:
            finishConnect()
            guard state == .active else { return }
        case .registered:
            adopt()
            guard state == .active else { return }
        case .active:
            break
        }
        if events & EpollCall.output != 0 && writeBlocked {
            writeBlocked = false
            sendOutput()
        }
        if events & (EpollCall.peerHangUp | EpollCall.hangUp | EpollCall.error) != 0 { peerHungUp = true }
        if inputClosedDelivered {
            if events & (EpollCall.hangUp | EpollCall.error) != 0 { closeAfterHangUp() }
            return
        }
        if events & (EpollCall.input | EpollCall.peerHangUp | EpollCall.hangUp | EpollCall.error) != 0 {
            readAndDispatch()
        }
    }

    /// First event of an accepted socket: join the loop's list, start timers, call `onConnect`.
    private func adopt() {
        state = .active
        loop.link(self)
        lastReadAt = loop.now
        if let idle = options.readIdleTimeout {
            loop.schedule(at: loop.now + idle.nanoseconds, target: self, tag: TimerTag.idle)
        }
        if owner?.isDraining == true {
            close(reason: .shutdown)
            return
        }
        handlers.onConnect?(self)
    }

    private func finishConnect() {
        let error: CInt
        do {
            error = try SocketCall.option(fd, level: SOL_SOCKET, name: SO_ERROR)
        } catch {
            close(reason: .connectFailed(error))
            return
        }
        guard error == 0 else {
            close(reason: .connectFailed(SystemCallError("connect", Errno(rawValue: error))))
            return
        }
        adopt()
        guard state == .active else { return }
        let completion = connectCompletion
        connectCompletion = nil
        completion?(.success(self))
    }

    private var canRead: Bool {
        !inputEnded && !draining && !aboveHighWatermark && !readingPaused && reader.readableBytes < options.inputLimit
    }

    /// Reads what the socket has and runs the handler over it, until the socket is empty, a limit
    /// stops reading, or a worker took the handler. Loop only.
    func readAndDispatch() {
        while state == .active && !handlerRunning {
            readPaused = false
            readAvailable()
            guard state == .active else { return }
            if reader.readableBytes > 0 && !readingPaused {
                dispatch()
                if handlerRunning || state != .active { return }
            }
            if readPaused && canRead { continue }
            break
        }
        guard state == .active, !handlerRunning else { return }
        if inputEnded {
            if options.allowRemoteHalfClosure { inputDidEnd() } else { closeWhenFlushed(.peerClosed) }
        } else if draining {
            closeWhenFlushed(.shutdown)
        }
    }

    private func readAvailable() {
        while true {
            guard canRead else {
                readPaused = !inputEnded
                return
            }
            do {
                // Never offer much more than the input limit leaves room for.
                switch try reader.read(from: fd, limit: min(readSize, options.inputLimit - reader.readableBytes)) {
                case .done(0):
                    inputEnded = true
                    return
                case .done(let count):
                    lastReadAt = loop.now
                    if count >= reader.lastReadCapacity {
                        readSize = min(readSize * 4, max(options.maximumReadChunk, options.readChunk))
                    } else if count < readSize / 8 && readSize > options.readChunk {
                        readSize = max(readSize / 4, options.readChunk)
                    }
                    // A short read emptied the socket; the next arrival brings a new edge. A FIN
                    // that came with the data brings none, so after a hang-up read on to the end.
                    if count < reader.lastReadCapacity && !peerHungUp { return }
                case .wouldBlock:
                    return
                }
            } catch {
                close(reason: CloseReason(error))
                return
            }
        }
    }

    private func dispatch() {
        if case .workerPool(let pool) = options.execution {
            handlerRunning = true
            pool.submit(self)
            return
        }
        inDispatch = true
        let failure = runHandler()
        inDispatch = false
        if state == .closed {
            releaseBuffers()
        } else if let failure {
            close(reason: .handlerFailed(failure))
        } else {
            closeIfInputStuck()
        }
    }

    /// The input is full and the handler took nothing from it: no more bytes can be read, so it
    /// would wait for ever. Close instead (the server counts it).
    private func closeIfInputStuck() {
        if state == .active && reader.readableBytes >= options.inputLimit { close(reason: .inputLimit) }
    }

    /// Calls `onRequest` while it makes progress on the input. Returns what it threw, if it did.
    private func runHandler() -> String? {
        while reader.readableBytes > 0 && isActive && !readingPaused {
            let before = reader.readableBytes
            do {
                try handlers.onRequest(self)
            } catch {
                reader.release()
                return "\(error)"
            }
            reader.release()
            if reader.readableBytes == before { break }
        }
        return nil
    }

    /// Runs the handler on a worker thread, then hands the connection back to its loop.
    func runOnWorker() {
        handlerFailure = runHandler()
        loop.enqueue(.handlerFinished(self))
    }

    func handlerFinished() {
        handlerRunning = false
        if state == .closed {
            releaseBuffers()
            return
        }
        if let failure = handlerFailure {
            handlerFailure = nil
            close(reason: .handlerFailed(failure))
            return
        }
        closeIfInputStuck()
        readAndDispatch()
    }

    // MARK: Timers

    enum TimerTag {
        static let idle: UInt64 = 1
        static let write: UInt64 = 2
        static let connect: UInt64 = 3
    }

    private func armWriteTimer() {
        guard let timeout = options.writeTimeout, !writeTimerArmed else { return }
        writeTimerArmed = true
        loop.schedule(at: writeBlockedSince + timeout.nanoseconds, target: self, tag: TimerTag.write)
    }

    func timerFired(tag: UInt64) {
        switch tag {
        case TimerTag.idle:
            guard state == .active, let idle = options.readIdleTimeout?.nanoseconds else { return }
            if loop.now &- lastReadAt >= idle {
                close(reason: .idleTimeout)
            } else {
                loop.schedule(at: lastReadAt + idle, target: self, tag: TimerTag.idle)
            }
        case TimerTag.write:
            writeTimerArmed = false
            guard state == .active, writeBlocked, let timeout = options.writeTimeout?.nanoseconds else { return }
            if loop.now &- writeBlockedSince >= timeout {
                close(reason: .writeTimeout)
            } else {
                armWriteTimer()
            }
        case TimerTag.connect:
            if state == .connecting { close(reason: .connectTimeout) }
        default:
            return
        }
    }
}
