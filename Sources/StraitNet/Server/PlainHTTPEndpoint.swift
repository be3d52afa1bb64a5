import StraitSystem

/// A minimal HTTP/1.1 endpoint for operations: `GET` (or `HEAD`) of a few exact paths, each
/// answered by a closure with a status and a plain-text body, one request per connection. What
/// Prometheus scrapes (`/metrics`) and what a kubelet or load balancer probes (`/healthz`,
/// `/readyz`); not a web server.
///
/// Paths match exactly (a query string is ignored): `/metricsx` and `/metrics/` are 404. Other
/// methods get 405. The endpoint owns one ``EventLoopGroup`` thread and its ``Server``; the route
/// closures run on that thread, so a slow one delays the next request, never the caller's work.
/// ``shutdown()`` stops both.
public final class PlainHTTPEndpoint: @unchecked Sendable {
    /// What a route answers.
    public struct Response: Sendable {
        /// The HTTP status code (200, 404, 503…).
        public var status: Int
        /// The body, sent with its `Content-Length`.
        public var body: String
        /// The `Content-Type`; Prometheus' text format by default.
        public var contentType: String

        /// A 200 in the Prometheus text format by default.
        public init(status: Int = 200, body: String, contentType: String = "text/plain; version=0.0.4; charset=utf-8") {
            self.status = status
            self.body = body
            self.contentType = contentType
        }
    }

    /// The bound address (with the kernel's port when port 0 was asked for).
    public var address: SocketAddress { server.address }
    private let group: EventLoopGroup
    /// Whether ``shutdown()`` stops ``group`` (the endpoint made it) or leaves it to its owner.
    private let ownsGroup: Bool
    /// The server behind the endpoint: its listener travels in a restart's hand-over.
    public let server: Server

    /// Why a client was closed without an answer, for the owner to count.
    public enum Refusal: Sendable {
        /// No end of headers within ``HTTPRequestHead/maximumHeaderBytes``.
        case tooLarge
        /// Nothing more arrived for ``idleTimeout`` before the request was complete.
        case timeout
    }

    /// A client that sends nothing for this long before its request is complete is closed.
    public static let idleTimeout: Duration = .seconds(10)

    /// Binds `address` (or serves on `listener`, a predecessor's socket already bound there, which
    /// this endpoint then owns) and serves `routes` (exact path → answer). A client is read up to
    /// the header bound and for at most ``idleTimeout`` of silence, so a hostile one holds one
    /// descriptor and at most a few KiB; `refused` hears of each one closed that way.
    ///
    /// It runs on `group` when given (the proxy serves `/metrics` on its own loops; the group stays
    /// its owner's, to shut down after this endpoint), else on a one-loop group of its own.
    public init(
        address: SocketAddress, listener: Listener? = nil, group shared: EventLoopGroup? = nil, routes: [String: @Sendable () -> Response],
        refused: (@Sendable (Refusal) -> Void)? = nil
    ) throws(SystemCallError) {
        if let shared {
            group = shared
        } else {
            group = try EventLoopGroup(loopCount: 1)
        }
        ownsGroup = shared == nil
        var configuration = ServerConfiguration()
        configuration.connection.inputLimit = 2 * HTTPRequestHead.maximumHeaderBytes
        configuration.connection.readIdleTimeout = Self.idleTimeout
        do {
            let handlers = ConnectionHandlers(onRequest: { connection in
                let reader = connection.reader
                guard let window = try? reader.peek(min(reader.readableBytes, HTTPRequestHead.maximumHeaderBytes + 4)) else { return }
                let head = HTTPRequestHead.classify(window)
                switch head {
                case .incomplete: return
                case .tooLarge:  // no end of headers within the bound: not a probe, and never buffered
                    refused?(.tooLarge)
                    connection.close()
                    return
                case .malformed, .request: try reader.skip(reader.readableBytes)
                }
                let response = Self.answer(head, routes: routes)
                let isHead: Bool = if case .request("HEAD", _) = head { true } else { false }
                connection.writer.write(string: "HTTP/1.1 \(response.status) \(Self.reason(response.status))\r\nContent-Type: \(response.contentType)\r\nContent-Length: \(response.body.utf8.count)\r\nConnection: close\r\n\r\n" + (isHead ? "" : response.body))
                connection.flush()
                connection.close()
            }, onDisconnect: { _, reason in
                switch reason {
                case .inputLimit: refused?(.tooLarge)
                case .idleTimeout: refused?(.timeout)
                default: break
                }
            })
            if let listener {
                server = try Server(listeners: [listener], group: group, configuration: configuration, handlers: handlers)
            } else {
                server = try Server(address: address, group: group, configuration: configuration, handlers: handlers)
            }
        } catch {
            if ownsGroup { group.shutdown() }
            throw error
        }
    }

    /// Routes one request head: the request line's method and exact path.
    static func answer(_ head: HTTPRequestHead, routes: [String: @Sendable () -> Response]) -> Response {
        guard case .request(let method, let path) = head else { return Response(status: 400, body: "bad request\n") }
        guard method == "GET" || method == "HEAD" else { return Response(status: 405, body: "only GET and HEAD\n") }
        guard let route = routes[path] else {
            return Response(status: 404, body: "not found; try " + routes.keys.sorted().joined(separator: ", ") + "\n")
        }
        return route()
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }

    /// Stops accepting, closes open connections and, when the endpoint made its own group, stops
    /// its thread. Call once.
    public func shutdown() async {
        await server.shutdown(gracePeriod: .milliseconds(100))
        if ownsGroup { group.shutdown() }
    }
}
