import StraitSystem

/// Why a connection closed, handed to `onDisconnect`.
public enum CloseReason: Sendable, Equatable, CustomStringConvertible {
    /// This side called ``Connection/close()``.
    case local
    /// The peer finished sending (FIN); pending responses were sent first.
    case peerClosed
    /// The peer reset the connection (`ECONNRESET`, or `EPIPE` on write).
    case reset
    /// Any other socket error.
    case failed(SystemCallError)
    /// Nothing was read for ``ConnectionOptions/readIdleTimeout``.
    case idleTimeout
    /// Output stayed blocked for ``ConnectionOptions/writeTimeout``.
    case writeTimeout
    /// The dial did not complete within its timeout.
    case connectTimeout
    /// The dial failed (refused, unreachable...).
    case connectFailed(SystemCallError)
    /// `onRequest` threw; the description of what it threw.
    case handlerFailed(String)
    /// ``ConnectionOptions/inputLimit`` unread bytes sat in the input and the handler consumed
    /// none of them (a request or frame larger than the limit): waiting could only wedge.
    case inputLimit
    /// The server or the event loop group shut down.
    case shutdown

    init(_ error: SystemCallError) {
        switch error.errno {
        case .connectionReset, .brokenPipe: self = .reset
        default: self = .failed(error)
        }
    }

    /// True for the three deadline reasons, like Netpoll's `Timeout()`.
    public var isTimeout: Bool {
        switch self {
        case .idleTimeout, .writeTimeout, .connectTimeout: true
        default: false
        }
    }

    /// Why the connection closed, in a few words for logs.
    public var description: String {
        switch self {
        case .local: "closed locally"
        case .peerClosed: "closed by peer"
        case .reset: "reset by peer"
        case .failed(let error): "failed: \(error)"
        case .idleTimeout: "read idle timeout"
        case .writeTimeout: "write timeout"
        case .connectTimeout: "connect timeout"
        case .connectFailed(let error): "connect failed: \(error)"
        case .handlerFailed(let error): "handler failed: \(error)"
        case .inputLimit: "input limit reached with no complete request"
        case .shutdown: "shut down"
        }
    }
}

/// Errors StraitNet operations throw; each says which step failed.
public enum NetError: Error, Sendable, Equatable {
    /// A socket or epoll call failed.
    case system(SystemCallError)
    /// The connection closed before the operation finished.
    case closed(CloseReason)
    /// An RPC got no response within its timeout.
    case timeout
    /// A peer sent a frame that breaks the protocol (too long, unknown kind).
    case protocolViolation(String)
}

/// Where `onRequest` runs; chosen per server (or per dialed connection).
public enum HandlerExecution: Sendable {
    /// On the connection's event loop thread: the fastest, for handlers that never block.
    case onLoop
    /// On a thread of `pool`, so a slow or blocking handler never stalls a loop. Costs two thread
    /// hand-offs per burst of input.
    case workerPool(WorkerPool)
}

/// Per-connection limits and deadlines.
public struct ConnectionOptions: Sendable {
    /// Reading stops while this many unread bytes sit in the input, until the handler consumes some;
    /// a handler that consumes none of them then (the request is larger) closes the connection
    /// with ``CloseReason/inputLimit``. RPC framing refuses a frame that could not fit
    /// (``Frame/maximumLength(_:for:)``) before it gets here.
    public var inputLimit = 4 << 20
    /// Above this many unsent output bytes the connection stops reading (so the peer's requests
    /// stop producing responses), until output falls to ``outputLowWatermark``.
    public var outputHighWatermark = 1 << 20
    /// Once reading stopped at ``outputHighWatermark``, unsent output must fall to this many bytes
    /// before the connection reads again; the gap keeps it from toggling on every write.
    public var outputLowWatermark = 256 << 10
    /// Close when nothing arrives for this long (nil: never).
    public var readIdleTimeout: Duration?
    /// Close when output stays blocked (peer not reading) for this long (nil: never).
    public var writeTimeout: Duration?
    /// Bytes one `readv` aims to read at first; the node pool's 16 KiB class by default. A read
    /// that fills all it was offered quadruples the next one, up to ``maximumReadChunk``; reads
    /// that use under an eighth shrink it back (bulk transfers take fewer syscalls, small
    /// request/response traffic keeps small nodes).
    public var readChunk = 16 << 10
    /// Ceiling of the adaptive read size; the node pool's 256 KiB class by default.
    public var maximumReadChunk = 256 << 10
    /// `TCP_NODELAY` on TCP sockets.
    public var noDelay = true
    /// Where `onRequest` runs.
    public var execution: HandlerExecution = .onLoop
    /// Keep the connection open when the peer finishes sending (its FIN), like SwiftNIO's
    /// `allowRemoteHalfClosure`: ``ConnectionHandlers/onInputClosed`` is called instead of closing,
    /// the connection can still write, and ``Connection/shutdownOutput()`` sends this side's FIN;
    /// with both directions shut it closes. Off by default: the connection closes at the peer's
    /// FIN once its responses are sent, which is what request/response servers want.
    public var allowRemoteHalfClosure = false

    /// The defaults: handlers on the loop, 4 MiB input limit, 1 MiB / 256 KiB output watermarks,
    /// `TCP_NODELAY`, no idle or write timeout, close at end of input.
    public init() {}
}

/// What a connection calls, all optional but `onRequest`.
public struct ConnectionHandlers: Sendable {
    /// After the connection is established, on its loop.
    public var onConnect: (@Sendable (Connection) -> Void)?
    /// Whenever input has unread bytes. Read from ``Connection/reader``, write to
    /// ``Connection/writer`` and call ``Connection/flush()``. Return without consuming to wait
    /// for more bytes; the connection calls again once more arrive. Views from the reader are
    /// valid until this call returns. Throwing closes the connection.
    public var onRequest: @Sendable (Connection) throws -> Void
    /// Once, after the connection closed, with the reason. Not called if `onConnect` never was.
    public var onDisconnect: (@Sendable (Connection, CloseReason) -> Void)?
    /// Once, on the loop, when the peer finished sending and every byte it sent was handed to
    /// `onRequest` (and reading is not paused), with ``ConnectionOptions/allowRemoteHalfClosure``
    /// on. The connection stays open for writing until ``Connection/shutdownOutput()`` or a close.
    public var onInputClosed: (@Sendable (Connection) -> Void)?

    /// Handlers for a server or a dialed connection; only `onRequest` is required.
    public init(
        onConnect: (@Sendable (Connection) -> Void)? = nil,
        onRequest: @escaping @Sendable (Connection) throws -> Void,
        onDisconnect: (@Sendable (Connection, CloseReason) -> Void)? = nil,
        onInputClosed: (@Sendable (Connection) -> Void)? = nil
    ) {
        self.onConnect = onConnect
        self.onRequest = onRequest
        self.onDisconnect = onDisconnect
        self.onInputClosed = onInputClosed
    }
}
