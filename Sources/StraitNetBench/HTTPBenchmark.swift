import Foundation
import StraitBenchSupport

/// `strait bench net`, part 1: the StraitNet and SwiftNIO plaintext HTTP servers side by side,
/// each in its own process with the same thread count, loaded by `wrk` (nobody here wrote it).
///
/// Each run starts one server, waits for its port, runs `wrk -t1 -c N -d D --latency`, reads
/// requests/s and the 50th/99th latency percentiles from wrk's report, reads the server's peak RSS
/// (`VmHWM`) and stops it. Servers and wrk talk over 127.0.0.1 only.
public struct HTTPBenchmark: Sendable {
    /// One server's figures at one connection count.
    public struct Measurement: Sendable, Equatable {
        /// Requests per second over the run, as wrk reports it.
        public var requestsPerSecond: Double
        /// Median latency, in milliseconds (wrk's `50%` line).
        public var p50Milliseconds: Double
        /// 99th-percentile latency, in milliseconds (wrk's `99%` line): the tail the issue compares.
        public var p99Milliseconds: Double
        /// The server's peak resident memory (`VmHWM`), in KiB.
        public var peakRSSKiB: Int

        /// The median of each figure over repeated runs.
        static func median(_ runs: [Measurement]) -> Measurement {
            Measurement(
                requestsPerSecond: StraitBenchSupport.median(runs.map(\.requestsPerSecond)), p50Milliseconds: StraitBenchSupport.median(runs.map(\.p50Milliseconds)),
                p99Milliseconds: StraitBenchSupport.median(runs.map(\.p99Milliseconds)), peakRSSKiB: runs.map(\.peakRSSKiB).max() ?? 0)
        }
    }

    /// Both servers at one connection count; encodes as one entry of the `"http"` array.
    public struct Row: Sendable, Equatable, Encodable {
        /// wrk's connection count (`-c`).
        public var connections: Int
        /// The StraitNet server's figures.
        public var straitnet: Measurement
        /// The SwiftNIO server's figures.
        public var swiftnio: Measurement

        enum Keys: String, CodingKey {
            case connections, straitnet_rps, swiftnio_rps, straitnet_p50_ms, swiftnio_p50_ms, straitnet_p99_ms, swiftnio_p99_ms
            case straitnet_peak_rss_kib, swiftnio_peak_rss_kib
        }

        /// Flat keys (`straitnet_rps`, `swiftnio_p99_ms`, …), the `--json` format.
        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(connections, forKey: .connections)
            try container.encode(straitnet.requestsPerSecond, forKey: .straitnet_rps)
            try container.encode(swiftnio.requestsPerSecond, forKey: .swiftnio_rps)
            try container.encode(straitnet.p50Milliseconds, forKey: .straitnet_p50_ms)
            try container.encode(swiftnio.p50Milliseconds, forKey: .swiftnio_p50_ms)
            try container.encode(straitnet.p99Milliseconds, forKey: .straitnet_p99_ms)
            try container.encode(swiftnio.p99Milliseconds, forKey: .swiftnio_p99_ms)
            try container.encode(straitnet.peakRSSKiB, forKey: .straitnet_peak_rss_kib)
            try container.encode(swiftnio.peakRSSKiB, forKey: .swiftnio_peak_rss_kib)
        }
    }

    /// Folder holding the `straitnet-http` and `swiftnio-http` executables (the build's products).
    public var binaries: URL
    /// Connection counts, one point each.
    public var connections: [Int] = [64, 256, 1000]
    /// Seconds of wrk per point (`-d`).
    public var seconds = 10
    /// Event-loop threads of each server.
    public var serverThreads = 2
    /// Measure each point this many times, alternating the two servers; the median of each figure is reported.
    public var repeats = 1
    /// Pin both servers' loop threads alike (`--pin-loops`: loop `i` on CPU `i` modulo the core
    /// count), so that neither server's tail depends on where the scheduler happens to put it.
    /// Off by default: a pinned loop cannot leave the CPU wrk runs on (README, StraitNet).
    public var pinLoops = false
    /// Preferred ports; the next free one in 47000-47999 is taken.
    public var straitnetPort = 47080
    /// The SwiftNIO server's preferred port.
    public var swiftnioPort = 47081

    /// A benchmark of the servers in `binaries`, with the defaults above; starts nothing until ``run(progress:)``.
    public init(binaries: URL) { self.binaries = binaries }

    /// Runs every connection count against both servers, one server at a time; `progress` hears
    /// about each step.
    public func run(progress: (String) -> Void = { _ in }) throws -> [Row] {
        try connections.map { count in
            var straitnet: [Measurement] = [], swiftnio: [Measurement] = []
            for round in 1...max(1, repeats) {
                let suffix = repeats > 1 ? " (\(round)/\(repeats))" : ""
                progress("http: straitnet-http, \(count) connections, \(seconds) s" + suffix)
                straitnet.append(try measure(server: "straitnet-http", port: straitnetPort, connections: count))
                progress("http: swiftnio-http, \(count) connections, \(seconds) s" + suffix)
                swiftnio.append(try measure(server: "swiftnio-http", port: swiftnioPort, connections: count))
            }
            return Row(connections: count, straitnet: .median(straitnet), swiftnio: .median(swiftnio))
        }
    }

    func measure(server name: String, port preferred: Int, connections: Int) throws -> Measurement {
        let port = Int(BenchPorts.available(preferred: UInt16(preferred)))
        let server = try PeerProcess(binaries: binaries, name: name, arguments: [String(port), String(serverThreads)] + (pinLoops ? ["--pin-loops"] : []))
        defer { server.stop() }
        try BenchPorts.waitForListener(port: UInt16(port))
        let report = try Self.wrk(connections: connections, seconds: seconds, port: port)
        var measurement = try Self.parse(wrk: report)
        measurement.peakRSSKiB = server.peakRSSKiB
        return measurement
    }

    /// Runs `wrk -t1 -cN -dS --latency` against 127.0.0.1:`port` and returns its report.
    static func wrk(connections: Int, seconds: Int, port: Int) throws -> String {
        let wrk = Process()
        wrk.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        guard FileManager.default.isExecutableFile(atPath: wrk.executableURL!.path) else { throw BenchmarkError.missingPeer("/usr/bin/wrk (apt-get install wrk, or `make deps`)") }
        wrk.arguments = ["-t1", "-c\(connections)", "-d\(seconds)", "--latency", "http://127.0.0.1:\(port)/"]
        let output = Pipe()
        wrk.standardOutput = output
        wrk.standardError = FileHandle.nullDevice
        try wrk.run()
        ChildProcesses.add(wrk.processIdentifier)
        defer { ChildProcesses.remove(wrk.processIdentifier) }
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        wrk.waitUntilExit()
        return report
    }

    /// Reads "Requests/sec:" and the 50%/99% lines of wrk's `--latency` report (`strait bench accel` reads its wrk runs with it too).
    public static func parse(wrk report: String) throws -> Measurement {
        var measurement = Measurement(requestsPerSecond: 0, p50Milliseconds: 0, p99Milliseconds: 0, peakRSSKiB: 0)
        for line in report.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2 else { continue }
            switch fields[0] {
            case "Requests/sec:": measurement.requestsPerSecond = Double(fields[1]) ?? 0
            case "50%": measurement.p50Milliseconds = milliseconds(fields[1])
            case "99%": measurement.p99Milliseconds = milliseconds(fields[1])
            default: continue
            }
        }
        guard measurement.requestsPerSecond > 0 else { throw BenchmarkError.unreadableReport(report) }
        return measurement
    }

    /// wrk prints durations as "812.00us", "1.23ms" or "2.01s"; whole microseconds, in milliseconds.
    static func milliseconds(_ text: Substring) -> Double {
        for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] where text.hasSuffix(suffix) {
            return ((Double(text.dropLast(suffix.count)) ?? 0) * scale * 1000).rounded() / 1000
        }
        return 0
    }
}
