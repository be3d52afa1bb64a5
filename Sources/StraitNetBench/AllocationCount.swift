import Foundation
import StraitBenchSupport

/// `strait bench net`, part 3: heap allocations per request in each server once warm.
///
/// Each server runs with ordo-one/malloc-interposer preloaded (`libMallocInterposerSwift.so` from
/// the same build folder) and `--count-allocations`, under load: wrk at 64 connections for HTTP,
/// the side's own load client with 16 callers of 128 B for echo. After a warm-up the benchmark
/// tells the server `begin`, and `end` a few seconds later; the server reports every allocation its
/// threads made in between and how many requests it answered. These runs are apart from the timed
/// ones: the interposer slows every allocation down.
public struct AllocationCount: Sendable {
    /// One server's count.
    public struct Measurement: Sendable, Equatable {
        /// Heap allocations (malloc, calloc, realloc, posix_memalign) in the counted window, every thread.
        public var allocations: Int
        /// Requests the server answered in that window.
        public var requests: Int
        /// Allocations per request; NaN when no request was answered.
        public var perRequest: Double { requests > 0 ? Double(allocations) / Double(requests) : .nan }
    }

    /// Both servers on one path (`http` or `echo`); encodes as one entry of the `"allocations"` array.
    public struct Row: Sendable, Equatable, Encodable {
        /// `http` (wrk) or `echo` (the RPC load peer).
        public var path: String
        /// The StraitNet server's count.
        public var straitnet: Measurement
        /// The SwiftNIO server's count.
        public var swiftnio: Measurement

        enum Keys: String, CodingKey {
            case path, straitnet_per_request, swiftnio_per_request, straitnet_allocations, swiftnio_allocations, straitnet_requests, swiftnio_requests
        }

        /// Flat keys (`straitnet_per_request`, …), the `--json` format.
        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(path, forKey: .path)
            try container.encode(straitnet.perRequest, forKey: .straitnet_per_request)
            try container.encode(swiftnio.perRequest, forKey: .swiftnio_per_request)
            try container.encode(straitnet.allocations, forKey: .straitnet_allocations)
            try container.encode(swiftnio.allocations, forKey: .swiftnio_allocations)
            try container.encode(straitnet.requests, forKey: .straitnet_requests)
            try container.encode(swiftnio.requests, forKey: .swiftnio_requests)
        }
    }

    /// Folder holding the servers and `libMallocInterposerSwift.so` (the build's products).
    public var binaries: URL
    /// Load before counting starts, then the counted window.
    public var warmUpSeconds = 1.5
    /// Length of the counted window, between `begin` and `end`.
    public var countedSeconds = 2.0
    /// Event-loop threads of each server.
    public var serverThreads = 2

    /// A count of the servers in `binaries`; starts nothing until ``run(progress:)``.
    public init(binaries: URL) { self.binaries = binaries }

    var interposer: URL { binaries.appendingPathComponent("libMallocInterposerSwift.so") }

    /// Counts both paths for both servers, one server process at a time (each preloaded with the
    /// interposer, so slower than in the timed runs); `progress` hears about each step.
    public func run(progress: (String) -> Void = { _ in }) throws -> [Row] {
        progress("allocations: http, wrk 64 connections")
        let http = Row(path: "http", straitnet: try countHTTP(server: "straitnet-http", port: 47082), swiftnio: try countHTTP(server: "swiftnio-http", port: 47083))
        progress("allocations: echo, 16 callers of 128 B")
        let echo = Row(path: "echo", straitnet: try countEcho(peer: "straitnet-rpc", port: 47092), swiftnio: try countEcho(peer: "swiftnio-rpc", port: 47093))
        return [http, echo]
    }

    private var loadSeconds: Int { Int((warmUpSeconds + countedSeconds).rounded(.up)) + 1 }

    func countHTTP(server name: String, port preferred: Int) throws -> Measurement {
        let port = Int(BenchPorts.available(preferred: UInt16(preferred)))
        let server = try PeerProcess(binaries: binaries, name: name, arguments: [String(port), String(serverThreads), "--count-allocations"], preload: interposer)
        defer { server.stop() }
        try BenchPorts.waitForListener(port: UInt16(port))
        let seconds = loadSeconds
        let wrkDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = try? HTTPBenchmark.wrk(connections: 64, seconds: seconds, port: port)
            wrkDone.signal()
        }
        defer { wrkDone.wait() }
        return try count(in: server)
    }

    func countEcho(peer: String, port preferred: Int) throws -> Measurement {
        let port = Int(BenchPorts.available(preferred: UInt16(preferred)))
        let server = try PeerProcess(binaries: binaries, name: peer, arguments: ["serve", String(port), String(serverThreads), "--count-allocations"], preload: interposer)
        defer { server.stop() }
        try BenchPorts.waitForListener(port: UInt16(port))
        let load = try PeerProcess(binaries: binaries, name: peer, arguments: ["load", String(port), "128", "16", String(loadSeconds)])
        defer { load.waitForExit(timeout: Double(loadSeconds) + 15) }
        return try count(in: server)
    }

    /// `begin` after the warm-up, `end` after the counted window, and the server's answer.
    private func count(in server: PeerProcess) throws -> Measurement {
        usleep(useconds_t(warmUpSeconds * 1e6))
        server.send("begin")
        usleep(useconds_t(countedSeconds * 1e6))
        server.send("end")
        let line = try server.waitForLine(startingWith: "allocations ", timeout: 5)
        let fields = line.split(separator: " ")
        guard fields.count >= 6, let allocations = Int(fields[1]), let requests = Int(fields[5]) else { throw BenchmarkError.unreadableReport(line) }
        return Measurement(allocations: allocations, requests: requests)
    }
}
