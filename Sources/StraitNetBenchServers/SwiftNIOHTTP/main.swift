// The SwiftNIO peer of straitnet-http: NIOPosix + NIOHTTP1, same response, same thread count.
// Usage: swiftnio-http PORT [THREADS] [--count-allocations]
import BenchAllocationCounter
import NIOCore
import NIOHTTP1
import NIOPosix

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? Int(arguments[1]) ?? 47081 : 47081
let threads = arguments.count > 2 ? Int(arguments[2]) ?? 2 : 2
let allocations = AllocationCounter.fromArguments(arguments)

final class HelloHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let body: ByteBuffer = ByteBuffer(string: "Hello, World!")
    static let head: HTTPResponseHead = {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain")
        headers.add(name: "Content-Length", value: "13")
        return HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
    }()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        context.write(wrapOutboundOut(.head(Self.head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(Self.body))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: nil)
        allocations?.requests.add(1, ordering: .relaxed)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(HelloHandler())
        }
    }
    .bind(host: "127.0.0.1", port: port)
    .wait()
print("swiftnio-http listening on \(channel.localAddress!) with \(threads) threads")
try channel.closeFuture.wait()
