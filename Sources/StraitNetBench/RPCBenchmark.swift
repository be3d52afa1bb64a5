import Foundation
import StraitBenchSupport

/// `strait bench net`, part 2: echo RPC over one multiplexed connection. StraitNet's `FrameServer`
/// loaded through its `MuxClient` (`straitnet-rpc`) against a SwiftNIO echo server loaded by a NIO
/// client (`swiftnio-rpc`), same frame layout, each server and each load client in its own process.
///
/// Every point is a number of closed-loop callers (each sends, waits for its answer, sends again)
/// sharing one connection with a payload size; the load process reports calls per second and
/// HdrHistogram latency percentiles after a warm-up it does not record.
public struct RPCBenchmark: Sendable {
    /// One side's figures at one point.
    public struct Measurement: Sendable, Equatable, Decodable {
        /// Calls completed in the recorded part of the run.
        public var calls: Int
        /// Calls per second in the recorded part.
        public var qps: Double
        /// Median call latency, in microseconds (HdrHistogram).
        public var p50Microseconds: Double
        /// 99th-percentile call latency, in microseconds (HdrHistogram).
        public var p99Microseconds: Double
        /// Calls that failed or came back with other bytes than were sent.
        public var errors: Int

        /// The median of each figure over repeated runs (errors are added up).
        static func median(_ runs: [Measurement]) -> Measurement {
            Measurement(
                calls: Int(StraitBenchSupport.median(runs.map { Double($0.calls) })), qps: StraitBenchSupport.median(runs.map(\.qps)),
                p50Microseconds: StraitBenchSupport.median(runs.map(\.p50Microseconds)), p99Microseconds: StraitBenchSupport.median(runs.map(\.p99Microseconds)),
                errors: runs.reduce(0) { $0 + $1.errors })
        }

        enum CodingKeys: String, CodingKey {
            case calls, qps, errors
            case p50Microseconds = "p50_us"
            case p99Microseconds = "p99_us"
        }
    }

    /// Both sides at one point; encodes as one entry of the `"rpc"` array.
    public struct Row: Sendable, Equatable, Encodable {
        /// Bytes of payload per call.
        public var payloadBytes: Int
        /// Closed-loop callers sharing the one connection.
        public var callers: Int
        /// The StraitNet side's figures.
        public var straitnet: Measurement
        /// The SwiftNIO side's figures.
        public var swiftnio: Measurement

        enum Keys: String, CodingKey {
            case payload_bytes, callers, straitnet_qps, swiftnio_qps, straitnet_p50_ms, swiftnio_p50_ms, straitnet_p99_ms, swiftnio_p99_ms
            case straitnet_errors, swiftnio_errors
        }

        /// Flat keys (`straitnet_qps`, `swiftnio_p99_ms`, …), the `--json` format.
        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(payloadBytes, forKey: .payload_bytes)
            try container.encode(callers, forKey: .callers)
            try container.encode(straitnet.qps, forKey: .straitnet_qps)
            try container.encode(swiftnio.qps, forKey: .swiftnio_qps)
            try container.encode((straitnet.p50Microseconds).rounded() / 1000, forKey: .straitnet_p50_ms)
            try container.encode((swiftnio.p50Microseconds).rounded() / 1000, forKey: .swiftnio_p50_ms)
            try container.encode((straitnet.p99Microseconds).rounded() / 1000, forKey: .straitnet_p99_ms)
            try container.encode((swiftnio.p99Microseconds).rounded() / 1000, forKey: .swiftnio_p99_ms)
            try container.encode(straitnet.errors, forKey: .straitnet_errors)
            try container.encode(swiftnio.errors, forKey: .swiftnio_errors)
        }
    }

    /// Folder holding `straitnet-rpc` and `swiftnio-rpc` (the build's products).
    public var binaries: URL
    /// Payload sizes in bytes, one point each (with every caller count).
    public var payloadSizes = [128, 4096]
    /// Caller counts, one point each (with every payload size).
    public var callers = [1, 16, 128]
    /// Seconds per point (the first fifth, at most 1 s, is warm-up).
    public var seconds = 5
    /// Event-loop threads of each server.
    public var serverThreads = 2
    /// Measure each point this many times, alternating the two sides; the median of each figure is reported.
    public var repeats = 1
    /// Preferred ports; the next free one in 47000-47999 is taken.
    public var straitnetPort = 47090
    /// The SwiftNIO side's preferred port.
    public var swiftnioPort = 47091

    /// A benchmark of the peers in `binaries`, with the defaults above; starts nothing until ``run(progress:)``.
    public init(binaries: URL) { self.binaries = binaries }

    /// Runs every payload and caller count against both sides, one process pair at a time;
    /// `progress` hears about each step.
    public func run(progress: (String) -> Void = { _ in }) throws -> [Row] {
        var rows: [Row] = []
        for payload in payloadSizes {
            for count in callers {
                var straitnet: [Measurement] = [], swiftnio: [Measurement] = []
                for round in 1...max(1, repeats) {
                    let suffix = repeats > 1 ? " (\(round)/\(repeats))" : ""
                    progress("rpc: straitnet-rpc, \(payload) B, \(count) callers, \(seconds) s" + suffix)
                    straitnet.append(try measure(peer: "straitnet-rpc", port: straitnetPort, payload: payload, callers: count))
                    progress("rpc: swiftnio-rpc, \(payload) B, \(count) callers, \(seconds) s" + suffix)
                    swiftnio.append(try measure(peer: "swiftnio-rpc", port: swiftnioPort, payload: payload, callers: count))
                }
                rows.append(Row(payloadBytes: payload, callers: count, straitnet: .median(straitnet), swiftnio: .median(swiftnio)))
            }
        }
        return rows
    }

    func measure(peer: String, port preferred: Int, payload: Int, callers: Int) throws -> Measurement {
        let port = Int(BenchPorts.available(preferred: UInt16(preferred)))
        let server = try PeerProcess(binaries: binaries, name: peer, arguments: ["serve", String(port), String(serverThreads)])
        defer { server.stop() }
        try BenchPorts.waitForListener(port: UInt16(port))
        let load = try PeerProcess(binaries: binaries, name: peer, arguments: ["load", String(port), String(payload), String(callers), String(seconds)])
        defer { load.stop() }
        let line = try load.waitForLine(startingWith: "{", timeout: Double(seconds) + 20)
        return try JSONDecoder().decode(Measurement.self, from: Data(line.utf8))
    }
}
