/// Server-side framing: turns a connection's input into calls of a request handler, one per
/// complete frame, and sends the responses the handler writes.
///
/// Responses written during a burst are flushed together, so a pipelined client gets them in one
/// `writev`. The handler may instead answer later, from any thread, with ``FrameRequest/deferred``.
public enum FrameServer {
    /// Handlers for a ``Server`` that calls `handle` for each request frame. A frame longer than
    /// `maximumLength`, or than the connection's input limit can hold, closes the connection
    /// (``NetError/protocolViolation(_:)``) as soon as its header arrives.
    public static func handlers(
        maximumLength: Int = Frame.defaultMaximumLength,
        handle: @escaping @Sendable (inout FrameRequest) throws -> Void
    ) -> ConnectionHandlers {
        ConnectionHandlers(onRequest: { connection in
            let reader = connection.reader
            var wrote = false
            while let header = try Frame.next(in: reader, maximumLength: Frame.maximumLength(maximumLength, for: connection)) {
                guard header.kind == .request else {
                    throw NetError.protocolViolation("a client sent a frame of kind \(header.kind)")
                }
                var request = FrameRequest(id: header.id, payload: try reader.next(header.payloadLength), connection: connection)
                try handle(&request)
                wrote = wrote || request.responded
            }
            if wrote { connection.flush() }
        })
    }
}

/// One request frame, handed to a ``FrameServer`` handler.
public struct FrameRequest {
    /// The request's id, chosen by the client; the response carries it back.
    public let id: UInt64
    /// The payload: a view into the connection's input (a copy only if it spanned nodes), valid
    /// until the handler returns.
    public let payload: UnsafeRawBufferPointer
    /// The connection the request came on, owned by its server: answer on it (``Connection/send(_:)``), never close it from a worker.
    public let connection: Connection
    var responded = false

    /// Answers now: copies `bytes` into the connection's writer (sent after the current burst).
    public mutating func respond(_ bytes: UnsafeRawBufferPointer, kind: Frame.Kind = .response) {
        Frame.write(id: id, kind: kind, payload: bytes, to: connection.writer)
        responded = true
    }

    /// Answers now with `buffer`'s bytes, moved without copying.
    public mutating func respond(_ buffer: LinkBuffer) {
        Frame.write(id: id, kind: .response, payload: buffer, to: connection.writer)
        responded = true
    }

    /// A handle to answer later from any thread; the payload view does not outlive the handler,
    /// so copy what the answer needs first.
    public var deferred: FrameResponder { FrameResponder(id: id, connection: connection) }
}

/// Answers one request later, from any thread (``Connection/send(_:)``: one lock, no copy of the
/// staged frame).
public struct FrameResponder: Sendable {
    /// The id of the request this responder answers.
    public let id: UInt64
    let connection: Connection

    /// Sends `bytes` as the answer (`kind` `.error` for a failed request). Copies `bytes` once into a
    /// frame of its own and hands it to the connection's loop; safe from any thread, and a no-op once
    /// the connection has closed.
    public func respond(_ bytes: [UInt8], kind: Frame.Kind = .response) {
        let frame = LinkBuffer()
        bytes.withUnsafeBytes { Frame.write(id: id, kind: kind, payload: $0, to: frame) }
        connection.send(frame)
    }
}
