// The SwiftNIO side of the echo RPC benchmark in `strait bench net`: the same frame layout as
// StraitNet's `Frame` (u32 BE length of the rest, u64 BE request id, u8 kind, payload), written the
// way a SwiftNIO user would: a ByteToMessageDecoder, writes in channelRead, one flush in channelReadComplete.
//
//   swiftnio-rpc serve PORT [THREADS] [--count-allocations]
//   swiftnio-rpc load PORT PAYLOAD_BYTES CALLERS SECONDS
//       CALLERS closed-loop callers multiplexed over one channel on one event loop, requests matched
//       to callers by id; same warm-up and JSON line as `straitnet-rpc load`.
import BenchServerSupport
import Histogram
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
func argument(_ index: Int) -> Int? { arguments.count > index ? Int(arguments[index]) : nil }

func usage() -> Never {
    writeLine("usage: swiftnio-rpc serve PORT [THREADS] [--count-allocations] | load PORT PAYLOAD_BYTES CALLERS SECONDS", to: 2)
    exit(2)
}

func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// Cuts the byte stream into whole frames (slices of the cumulation buffer, no copy).
final class FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            buffer.readableBytes >= 4 + Int(length), let frame = buffer.readSlice(length: 4 + Int(length))
        else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }
}

/// Writes one frame: header, then a copy of the payload.
func writeFrame(id: UInt64, kind: UInt8, payload: ByteBuffer, into buffer: inout ByteBuffer) {
    buffer.writeInteger(UInt32(9 + payload.readableBytes))
    buffer.writeInteger(id)
    buffer.writeInteger(kind)
    buffer.writeImmutableBuffer(payload)
}

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let allocations: AllocationCounter?

    init(allocations: AllocationCounter?) { self.allocations = allocations }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let start = frame.readerIndex
        guard let id = frame.getInteger(at: start + 4, as: UInt64.self), let payload = frame.getSlice(at: start + 13, length: frame.readableBytes - 13)
        else { return context.close(promise: nil) }
        var response = context.channel.allocator.buffer(capacity: frame.readableBytes)
        writeFrame(id: id, kind: 1, payload: payload, into: &response)
        context.write(wrapOutboundOut(response), promise: nil)
        allocations?.requests.add(1, ordering: .relaxed)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

/// Closed-loop callers over one channel; all state is confined to the channel's loop.
final class LoadHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let payload: ByteBuffer
    let callers: Int
    let recordFrom: UInt64
    let end: UInt64
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var recorded = 0
    var errors = 0
    var running: Int
    var nextID: UInt64 = 0
    /// Requests in flight: id → send time.
    var pending: [UInt64: UInt64] = [:]
    let done: EventLoopPromise<Void>

    init(payloadBytes: Int, callers: Int, seconds: Int, done: EventLoopPromise<Void>) {
        payload = ByteBuffer(bytes: (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        self.callers = callers
        let now = monotonicNanoseconds()
        recordFrom = now + min(UInt64(seconds) * 200_000_000, 1_000_000_000)
        end = now + UInt64(seconds) * 1_000_000_000
        running = callers
        self.done = done
        pending.reserveCapacity(callers * 2)
    }

    func issue(context: ChannelHandlerContext) {
        nextID &+= 1
        pending[nextID] = monotonicNanoseconds()
        var request = context.channel.allocator.buffer(capacity: 13 + payload.readableBytes)
        writeFrame(id: nextID, kind: 0, payload: payload, into: &request)
        context.write(wrapOutboundOut(request), promise: nil)
    }

    func channelActive(context: ChannelHandlerContext) {
        for _ in 0..<callers { issue(context: context) }
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let now = monotonicNanoseconds()
        guard let id = frame.getInteger(at: frame.readerIndex + 4, as: UInt64.self), let sentAt = pending.removeValue(forKey: id) else {
            errors += 1
            return
        }
        if frame.readableBytes - 13 == payload.readableBytes {
            if sentAt >= recordFrom && now <= end {
                _ = histogram.record(now - sentAt)
                recorded += 1
            }
        } else {
            errors += 1
        }
        if now < end {
            issue(context: context)
        } else {
            running -= 1
            if running == 0 { finish(.success(())) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(ChannelError.ioOnClosedChannel))
    }

    private var finished = false

    func finish(_ result: Result<Void, Error>) {
        guard !finished else { return }
        finished = true
        done.completeWith(result)
    }

    func report() -> String {
        let seconds = Double(end - recordFrom) / 1e9
        func microseconds(_ percentile: Double) -> String { String(Double(histogram.valueAtPercentile(percentile)) / 1000) }
        return "{\"calls\":\(recorded),\"seconds\":\(seconds),\"qps\":\(Double(recorded) / seconds),"
            + "\"p50_us\":\(microseconds(50)),\"p99_us\":\(microseconds(99)),\"errors\":\(errors)}"
    }
}

switch arguments.count > 1 ? arguments[1] : "" {
case "serve":
    guard let port = argument(2) else { usage() }
    let threads = argument(3) ?? 2
    let allocations = AllocationCounter.fromArguments(arguments)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let channel = try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(EchoHandler(allocations: allocations))
            }
        }
        .bind(host: "127.0.0.1", port: port)
        .wait()
    print("swiftnio-rpc serving on \(channel.localAddress!) with \(threads) threads")
    try channel.closeFuture.wait()

case "load":
    guard let port = argument(2), let payloadBytes = argument(3), let callers = argument(4), let seconds = argument(5), callers > 0, seconds > 0
    else { usage() }
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop = group.next()
    let done = loop.makePromise(of: Void.self)
    let handler = LoadHandler(payloadBytes: payloadBytes, callers: callers, seconds: seconds, done: done)
    let channel = try ClientBootstrap(group: loop)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(handler)
            }
        }
        .connect(host: "127.0.0.1", port: port)
        .wait()
    let watchdog = loop.scheduleTask(in: .seconds(Int64(seconds) + 15)) { handler.finish(.failure(ChannelError.connectTimeout(.seconds(15)))) }
    try done.futureResult.wait()
    watchdog.cancel()
    print(try loop.submit { handler.report() }.wait())
    try channel.close().wait()
    try group.syncShutdownGracefully()

default:
    usage()
}
