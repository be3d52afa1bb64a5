/// What the proxy's `/metrics` endpoint makes of the bytes a client has sent so far: a pure
/// function of those bytes, so it is fuzzed on its own (`Fuzz/metrics-request`).
///
/// The endpoint answers one request per connection and reads nothing past the header block, so
/// it needs only the request line and the blank line that ends the headers. Anything longer than
/// ``maximumHeaderBytes`` without that blank line is refused: the connection is closed rather
/// than buffered without bound.
public enum MetricsRequest: Equatable, Sendable {
    /// The header block has not ended yet: wait for more bytes.
    case incomplete
    /// `GET /metrics` (optionally with a query string), any HTTP version.
    case metrics
    /// Any other complete request: answered 404.
    case other
    /// No end of headers within ``maximumHeaderBytes``: close the connection.
    case tooLarge

    /// The longest header block read (8 KiB, as nginx's default `large_client_header_buffers` line).
    public static let maximumHeaderBytes = 8192

    /// Classifies `bytes`, the start of what the client sent (at most ``maximumHeaderBytes`` + 4
    /// of them are looked at). Costs one pass over those bytes; copies nothing.
    public static func classify(_ bytes: UnsafeRawBufferPointer) -> MetricsRequest {
        let window = bytes.prefix(maximumHeaderBytes + 4)
        guard let end = headerEnd(window) else { return bytes.count > maximumHeaderBytes ? .tooLarge : .incomplete }
        let requestLine = window[..<end].prefix { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].elementsEqual("GET".utf8) else { return .other }
        let path = parts[1]
        let metricsPath = "/metrics".utf8
        guard path.starts(with: metricsPath) else { return .other }
        let rest = path.dropFirst(metricsPath.count)
        return rest.isEmpty || rest.first == UInt8(ascii: "?") ? .metrics : .other
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
