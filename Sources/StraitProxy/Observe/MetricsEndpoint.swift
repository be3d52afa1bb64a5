import StraitNet
import StraitSystem

/// A Prometheus scrape endpoint on a StraitNet server of its own (one loop): `GET /metrics`
/// answers with the text `exposition` returns at that moment, anything else with 404. Used by
/// `strait proxy` and `strait lb`. Owns its loop and listener until ``shutdown()``.
public final class MetricsEndpoint: Sendable {
    private let group: EventLoopGroup
    private let server: Server

    /// The bound address (port 0 in the request becomes the kernel's choice).
    public var address: SocketAddress { server.address }

    /// Listens on `address`; `exposition` runs on the endpoint's loop for every scrape.
    public init(address: SocketAddress, exposition: @escaping @Sendable () -> String) throws(SystemCallError) {
        group = try EventLoopGroup(loopCount: 1)
        do {
            server = try Server(address: address, group: group, handlers: ConnectionHandlers(onRequest: { connection in
                guard connection.reader.distance(to: UInt8(ascii: "\n")) != nil,
                      let request = try? connection.reader.peek(connection.reader.readableBytes)
                else { return }
                let text = String(decoding: request, as: UTF8.self)
                guard text.contains("\r\n\r\n") else { return }
                try connection.reader.skip(connection.reader.readableBytes)
                let found = text.hasPrefix("GET /metrics")
                let body = found ? exposition() : "see /metrics\n"
                let status = found ? "200 OK" : "404 Not Found"
                connection.writer.write(string: "HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
                connection.flush()
                connection.close()
            }))
        } catch {
            group.shutdown()
            throw error
        }
    }

    /// Stops listening and ends the loop.
    public func shutdown() async {
        await server.shutdown(gracePeriod: .milliseconds(100))
        group.shutdown()
    }
}
