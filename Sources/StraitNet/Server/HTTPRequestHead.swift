/// What ``PlainHTTPEndpoint`` makes of the bytes a client has sent so far: a pure function of
/// those bytes, so it is fuzzed on its own (`Fuzz/metrics-request`).
///
/// The endpoint answers one request per connection and reads nothing past the header block, so
/// it needs only the request line and the blank line that ends the headers. Anything longer than
/// ``maximumHeaderBytes`` without that blank line is refused: the connection is closed rather
/// than buffered without bound.
public enum HTTPRequestHead: Equatable, Sendable {
    /// The header block has not ended yet: wait for more bytes.
    case incomplete
    /// No end of headers within ``maximumHeaderBytes``: close the connection.
    case tooLarge
    /// A complete header block whose request line is not `METHOD PATH VERSION`: answered 400.
    case malformed
    /// A complete request: its method and its path without the query string.
    case request(method: String, path: String)

    /// The longest header block read (8 KiB, as nginx's default `large_client_header_buffers` line).
    public static let maximumHeaderBytes = 8192

    /// Classifies `bytes`, the start of what the client sent (at most ``maximumHeaderBytes`` + 4
    /// of them are looked at). Costs one pass over those bytes; copies only the method and path.
    public static func classify(_ bytes: UnsafeRawBufferPointer) -> HTTPRequestHead {
        let window = bytes.prefix(maximumHeaderBytes + 4)
        guard let end = headerEnd(window) else { return bytes.count > maximumHeaderBytes ? .tooLarge : .incomplete }
        let requestLine = window[..<end].prefix { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[1].first == UInt8(ascii: "/") else { return .malformed }
        let path = parts[1].prefix { $0 != UInt8(ascii: "?") }
        return .request(method: String(decoding: parts[0], as: UTF8.self), path: String(decoding: path, as: UTF8.self))
    }

    /// The index just past the blank line that ends the headers (`\r\n\r\n`, or a bare `\n\n`).
    static func headerEnd(_ bytes: Slice<UnsafeRawBufferPointer>) -> Int? {
        var index = bytes.startIndex
        var newlines = 0
        while index < bytes.endIndex {
            switch bytes[index] {
            case UInt8(ascii: "\n"):
                newlines += 1
                if newlines == 2 { return index + 1 }
            case UInt8(ascii: "\r"):
                break
            default:
                newlines = 0
            }
            index += 1
        }
        return nil
    }
}
