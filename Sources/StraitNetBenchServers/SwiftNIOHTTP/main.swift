// The SwiftNIO peer of straitnet-http: NIOPosix + NIOHTTP1, same response, same thread count.
// Usage: swiftnio-http PORT [THREADS] [--count-allocations] [--pin-loops]
// --pin-loops pins NIO thread i to CPU i modulo the core count (LoopPinning), as straitnet-http's
// --pin-loops does with StraitNet's EventLoopGroup.Placement.onePerCPU.
import BenchServerSupport
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
if LoopPinning.requested(arguments) {
    // Each NIO event loop owns one thread: a task submitted to loop i runs on it and pins it.
    for (index, loop) in group.makeIterator().enumerated() {
        try loop.submit { LoopPinning.pinCurrentThread(loop: index) }.wait()
    }
}
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
print("swiftnio-http listening on \(channel.localAddress!) with \(threads) threads\(LoopPinning.requested(arguments) ? ", pinned" : "")")
try channel.closeFuture.wait()
