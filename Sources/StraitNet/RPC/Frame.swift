/// The multiplexed RPC wire format: length-prefixed frames carrying a request id, so many requests
/// share one connection and responses may come back in any order.
///
/// ```
///  byte 0        4                    12     13
///       ┌────────┬────────────────────┬──────┬───────────────────────┐
///       │ length │ request id         │ kind │ payload               │
///       │ u32 BE │ u64 BE             │ u8   │ length - 9 bytes      │
///       └────────┴────────────────────┴──────┴───────────────────────┘
/// ```
///
/// `length` counts the bytes after itself (9 + payload), so a reader needs 4 bytes to know how
/// much to wait for. `kind` is ``Kind``. A response carries its request's id; ids are the
/// client's business and only need to be unique among its requests in flight on one connection.
/// A frame longer than the receiver's maximum is a protocol violation and closes the connection.
public enum Frame {
    /// What a frame carries; its one byte in the header.
    public enum Kind: UInt8, Sendable {
        case request = 0
        case response = 1
        /// A failed request; the payload is a UTF-8 message.
        case error = 2
    }

    /// Bytes before the payload.
    public static let headerSize = 13
    /// Default largest accepted frame (`length` field), 16 MiB.
    public static let defaultMaximumLength = 16 << 20

    /// The largest frame `connection` can take: `requested`, or less if the connection's input
    /// limit could not hold it whole (a longer frame would wait for bytes it can never read), so
    /// the two limits always agree and a frame above either is refused at its header.
    public static func maximumLength(_ requested: Int, for connection: Connection) -> Int {
        min(requested, connection.options.inputLimit - 4)
    }

    /// A complete frame's header, as found at the front of a reader.
    public struct Header: Sendable, Equatable {
        /// The request id the frame belongs to.
        public let id: UInt64
        /// Request, response or error.
        public let kind: Kind
        /// Bytes of payload after the header (at most the receiver's maximum length).
        public let payloadLength: Int
    }

    /// Writes a frame with a copy of `payload` to `writer` (staged; the caller flushes).
    public static func write(id: UInt64, kind: Kind, payload: UnsafeRawBufferPointer, to writer: LinkBuffer) {
        writeHeader(id: id, kind: kind, payloadLength: payload.count, to: writer)
        writer.write(payload)
    }

    /// Writes a frame whose payload is `payload`'s readable bytes, moved without copying.
    public static func write(id: UInt64, kind: Kind, payload: LinkBuffer, to writer: LinkBuffer) {
        payload.flush()
        writeHeader(id: id, kind: kind, payloadLength: payload.readableBytes, to: writer)
        writer.append(payload)
    }

    static func writeHeader(id: UInt64, kind: Kind, payloadLength: Int, to writer: LinkBuffer) {
        let header = writer.malloc(headerSize)
        header.storeBytes(of: UInt32(9 + payloadLength).bigEndian, toByteOffset: 0, as: UInt32.self)
        header.storeBytes(of: id.bigEndian, toByteOffset: 4, as: UInt64.self)
        header.storeBytes(of: kind.rawValue, toByteOffset: 12, as: UInt8.self)
    }

    /// The header of the frame at the front of `reader` when the whole frame has arrived, consuming
    /// the header (the payload is next); nil, consuming nothing, when more bytes are needed.
    /// Throws ``NetError/protocolViolation(_:)`` for a frame that is too long or of unknown kind.
    public static func next(in reader: LinkBuffer, maximumLength: Int = defaultMaximumLength) throws(NetError) -> Header? {
        guard reader.readableBytes >= headerSize else { return nil }
        let header = try! reader.peek(headerSize)
        let length = Int(UInt32(bigEndian: header.loadUnaligned(as: UInt32.self)))
        guard length >= 9, length <= maximumLength else {
            throw .protocolViolation("frame length \(length) outside 9...\(maximumLength)")
        }
        guard let kind = Kind(rawValue: header[12]) else { throw .protocolViolation("unknown frame kind \(header[12])") }
        guard reader.readableBytes >= 4 + length else { return nil }
        let id = UInt64(bigEndian: header.loadUnaligned(fromByteOffset: 4, as: UInt64.self))
        try! reader.skip(headerSize)
        return Header(id: id, kind: kind, payloadLength: length - 9)
    }
}
