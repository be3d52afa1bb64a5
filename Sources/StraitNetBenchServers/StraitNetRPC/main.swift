// The StraitNet side of the echo RPC benchmark in `strait bench net`.
//
//   straitnet-rpc serve PORT [LOOPS] [--count-allocations]
//       A FrameServer that answers every request frame with a response frame carrying the same payload.
//   straitnet-rpc load PORT PAYLOAD_BYTES CALLERS SECONDS
//       CALLERS closed-loop callers share one MuxClient (one connection, one loop): each sends a
//       request, waits for its response (borrowed, not copied), records the latency and sends the next. The first fifth of
//       the run (at most 1 s) is warm-up and not recorded. Prints one JSON line:
//       {"calls":N,"seconds":S,"qps":Q,"p50_us":A,"p99_us":B,"errors":E}
import BenchServerSupport
import Dispatch
import Histogram
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
func argument(_ index: Int) -> Int? { arguments.count > index ? Int(arguments[index]) : nil }

/// Prints the usage (after `problem`, when given) and exits 64 (EX_USAGE).
func usage(_ problem: String? = nil) -> Never {
    if let problem { writeLine("straitnet-rpc: \(problem)", to: 2) }
    writeLine("usage: straitnet-rpc serve PORT [LOOPS] [--count-allocations] | load PORT PAYLOAD_BYTES CALLERS SECONDS", to: 2)
    exit(64)
}

switch arguments.count > 1 ? arguments[1] : "" {
case "serve":
    guard let port = argument(2).flatMap(UInt16.init(exactly:)) else { usage() }
    let loops = arguments.count > 3 && !arguments[3].hasPrefix("--") ? argument(3) : 2
    guard let loops, (1...64).contains(loops) else { usage("LOOPS: from 1 to 64") }
    let allocations = AllocationCounter.fromArguments(arguments)
    try? ResourceLimits.raiseOpenFilesToHard()  // the server owns this process
    let group = try EventLoopGroup(loopCount: loops)
    let handlers = FrameServer.handlers { request in
        request.respond(request.payload)
        allocations?.requests.add(1, ordering: .relaxed)
    }
    let server = try Server(address: .loopback(port: port), group: group, handlers: handlers)
    print("straitnet-rpc serving on \(server.address) with \(group.loops.count) loops")
    while true { pause() }  // until the benchmark's SIGTERM

case "load":
    guard let port = argument(2).flatMap(UInt16.init(exactly:)), let payloadBytes = argument(3), let callers = argument(4),
        let seconds = argument(5), (0...(16 << 20)).contains(payloadBytes), (1...10_000).contains(callers), (1...3600).contains(seconds)
    else { usage("PAYLOAD_BYTES from 0 to 16777216, CALLERS from 1 to 10000, SECONDS from 1 to 3600") }
    let group = try EventLoopGroup(loopCount: 1)
    let client = try await MuxClient.connect(to: .loopback(port: port), dialer: Dialer(group: group))
    let run = LoadRun(client: client, payloadBytes: payloadBytes, callers: callers, seconds: seconds)
    client.loop.execute { run.start() }
    guard run.finished.wait(timeout: .now() + .seconds(seconds + 15)) == .success else {
        writeLine("straitnet-rpc load: callers still waiting 15 s after the end", to: 2)
        exit(1)
    }
    print(run.report())
    client.close()
    group.shutdown()

default:
    usage()
}

/// The callers' shared state. Everything but `finished` is touched only on the client's loop.
final class LoadRun: @unchecked Sendable {
    let client: MuxClient
    let payload: [UInt8]
    let recordFrom: UInt64
    let end: UInt64
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var recorded = 0
    var errors = 0
    var callers: [Caller] = []
    var running: Int
    let finished = DispatchSemaphore(value: 0)

    init(client: MuxClient, payloadBytes: Int, callers: Int, seconds: Int) {
        self.client = client
        payload = (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let now = SocketCall.monotonicNanoseconds()
        let warmUp = min(UInt64(seconds) * 200_000_000, 1_000_000_000)
        recordFrom = now + warmUp
        end = now + UInt64(seconds) * 1_000_000_000
        running = callers
        self.callers = (0..<callers).map { _ in Caller() }
        for caller in self.callers { caller.run = self }
    }

    func start() {
        for caller in callers { caller.issue() }
    }

    func report() -> String {
        let seconds = Double(end - recordFrom) / 1e9
        func microseconds(_ percentile: Double) -> String { String(Double(histogram.valueAtPercentile(percentile)) / 1000) }
        return "{\"calls\":\(recorded),\"seconds\":\(seconds),\"qps\":\(Double(recorded) / seconds),"
            + "\"p50_us\":\(microseconds(50)),\"p99_us\":\(microseconds(99)),\"errors\":\(errors)}"
    }
}

/// One closed-loop caller: its completion closure is made once and reused for every call.
final class Caller: @unchecked Sendable {
    unowned(unsafe) var run: LoadRun!
    var sentAt: UInt64 = 0
    lazy var completion: @Sendable (Result<UnsafeRawBufferPointer, NetError>) -> Void = { [unowned(unsafe) self] result in self.completed(result) }

    func issue() {
        sentAt = SocketCall.monotonicNanoseconds()
        run.client.call(run.payload, timeout: .seconds(10), borrowingResponse: completion)
    }

    func completed(_ result: Result<UnsafeRawBufferPointer, NetError>) {
        let now = SocketCall.monotonicNanoseconds()
        switch result {
        case .success(let response) where response.count == run.payload.count:
            if sentAt >= run.recordFrom && now <= run.end {
                _ = run.histogram.record(now - sentAt)
                run.recorded += 1
            }
        default:
            run.errors += 1
        }
        if now < run.end {
            issue()
        } else {
            run.running -= 1
            if run.running == 0 { run.finished.signal() }
        }
    }
}
