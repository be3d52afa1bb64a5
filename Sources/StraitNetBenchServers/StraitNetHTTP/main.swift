// HTTP/1.1 plaintext server on StraitNet for `strait bench net`: `GET /` (any request, in fact)
// gets 200 "Hello, World!" on a kept-alive connection.
// Usage: straitnet-http PORT [LOOPS] [--count-allocations] [--pin-loops]
// --pin-loops pins loop i to CPU i modulo the core count (EventLoopGroup.Placement.onePerCPU, the
// rule swiftnio-http's --pin-loops follows through LoopPinning); `strait bench net` passes it to both.
import BenchServerSupport
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The whole response, as in the TechEmpower plaintext test; the NIO peer sends the same headers.
let response: StaticString = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? UInt16(arguments[1]) ?? 47080 : 47080
let loops = arguments.count > 2 && !arguments[2].hasPrefix("--") ? Int(arguments[2]) ?? 0 : 2
guard (1...64).contains(loops) else {
    writeLine("straitnet-http: LOOPS from 1 to 64\nusage: straitnet-http [PORT] [LOOPS] [--count-allocations] [--pin-loops]", to: 2)
    exit(64)
}
let allocations = AllocationCounter.fromArguments(arguments)

// A request ends at its empty line. Lines are consumed as they complete, so a request split
// across reads needs no state: the empty line, whenever it comes, ends the current request.
// Requests are assumed to have no body (GET), as wrk sends.
let handlers = ConnectionHandlers(onRequest: { connection in
    let reader = connection.reader
    var responses = 0
    while let line = reader.until(0x0A) {
        if line.count <= 2 { responses += 1 }
    }
    guard responses > 0 else { return }
    let bytes = UnsafeRawBufferPointer(start: response.utf8Start, count: response.utf8CodeUnitCount)
    for _ in 0..<responses { connection.writer.write(bytes) }
    connection.flush()
    allocations?.requests.add(responses, ordering: .relaxed)
})

try? ResourceLimits.raiseOpenFilesToHard()  // the server owns this process
let placement: EventLoopGroup.Placement = LoopPinning.requested(arguments) ? .onePerCPU : .anywhere
let group = try EventLoopGroup(loopCount: loops, placement: placement)
var configuration = ServerConfiguration()
configuration.backlog = 4096
let server = try Server(address: .loopback(port: port), group: group, configuration: configuration, handlers: handlers)
print("straitnet-http listening on \(server.address) with \(loops) loops\(placement == .onePerCPU ? ", pinned" : "")")
// Runs until killed (the benchmark runner sends SIGTERM).
while true { pause() }
