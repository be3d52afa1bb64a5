import Foundation
import StraitAccel
import StraitBPF
import StraitBenchSupport
import StraitNetBench
import StraitSystem

/// `strait bench accel`: iperf3 throughput per message size and CPU placement, sockperf ping-pong
/// latency, and keep-alive HTTP/1.1 requests/s (wrk against `straitnet-http`), plain TCP against
/// accelerated, one after the other in one run, inside a private cgroup that the benchmark creates
/// and removes. Plain and accelerated runs alternate so that drift on a noisy machine touches both
/// alike. The accelerator is enabled as `strait accel enable` does, calibration included, and the
/// report carries the calibration in force.
public struct AccelBenchmark: Sendable {
    /// Where iperf3's client and server run: both on CPU 0, or client on CPU 0 and server on CPU 1.
    public enum Placement: String, Sendable, Codable, CaseIterable {
        case same, split

        /// iperf3's `-A client,server`.
        var affinity: String { self == .same ? "0,0" : "0,1" }
    }

    /// Bytes per write of the iperf3 throughput runs (`-l`), one row per size and placement.
    public var messageSizes: [Int] = [64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1 << 20]
    /// CPU placements measured for throughput.
    public var placements: [Placement] = Placement.allCases
    /// Length of each iperf3, sockperf and wrk run, in seconds.
    public var seconds: Double = 3
    /// Plain/accelerated pairs per measurement (order alternating); the report holds their medians.
    public var repeats: Int = 1
    /// Bytes per message of the sockperf ping-pong.
    public var latencyMessageBytes = 64
    /// The policy the accelerated runs enable, as `strait accel enable` would.
    public var policy = AccelPolicy()
    /// The calibration `enable` runs; nil skips it (every bulk size redirects, or `--bulk-bytes`).
    public var calibration: AccelCalibration.Plan? = AccelCalibration.Plan()
    /// Also measure every direction redirecting from its first send (the classic sk_msg setup).
    public var includeAlwaysRedirect = false
    /// The `straitnet-http` executable for the keep-alive HTTP row; nil leaves the row out.
    public var httpServer: String?
    /// wrk connections for the HTTP row (one wrk thread, one server loop).
    public var httpConnections = 16
    /// Called with a line of text as each step finishes (the CLI prints it to stderr); called on
    /// the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: 8 sizes from 64 B to 1 MiB, both placements, 3 s runs, one pair each.
    public init() {}

    /// Encodes with snake_case keys (`message_bytes`, `plain_gbit_s`, …), as `--json` prints it.
    public struct Report: Sendable, Codable {
        /// One row per placement and message size, in that order.
        public var throughput: [Row]
        /// Ping-pong with client and server where the scheduler puts them (on a small VM, mostly on
        /// two CPUs: each round trip then pays cross-CPU wake-ups, which redirect does not remove).
        public var latency: Latency
        /// The same with the benchmark and its children on CPU 0: the datapath's own cost.
        public var latencyOneCpu: Latency
        /// wrk against straitnet-http, small responses on kept-alive connections; nil when not run.
        public var http: HTTP?
        /// One AF_UNIX stream at 64 KiB writes, measured in the same run: the ceiling.
        public var afUnixGbitS: Double
        /// `adaptive` or `always`: the accelerated runs' ``AccelPolicy/adaptive`` setting.
        public var mode: String
        /// The calibration the accelerated runs used (nil when skipped) and the bulk sizes it redirects.
        public var calibration: AccelCalibration?
        /// The bulk sizes the calibration redirects, as `strait accel status` words them.
        public var redirectedBulkSizes: String
        /// The small-write sizes whose streams stay redirected (the calibration's answer).
        public var redirectedStreamSizes: String

        /// One message size in one placement: medians of the iperf3 runs, in Gbit/s.
        public struct Row: Sendable, Codable {
            /// Bytes per write.
            public var messageBytes: Int
            /// Where client and server ran.
            public var placement: Placement
            /// Plain TCP over loopback.
            public var plainGbitS: Double
            /// Inside the accelerated cgroup, with the policy as configured.
            public var acceleratedGbitS: Double
            /// Every direction redirected from its first send; nil unless
            /// ``AccelBenchmark/includeAlwaysRedirect``.
            public var alwaysRedirectGbitS: Double?
        }

        /// sockperf ping-pong latency, medians over the runs, in microseconds.
        public struct Latency: Sendable, Codable {
            /// Bytes per message.
            public var messageBytes: Int
            /// Median round trip, plain TCP.
            public var plainP50Us: Double
            /// Median round trip, accelerated.
            public var acceleratedP50Us: Double
            /// 99th-percentile round trip, plain TCP.
            public var plainP99Us: Double
            /// 99th-percentile round trip, accelerated.
            public var acceleratedP99Us: Double
            /// Share of the accelerated runs' sends that were redirected (the kernel counters over
            /// those runs): near 1 when request/response detection kept both directions redirected.
            public var redirectedShare: Double
        }

        /// Keep-alive HTTP/1.1 through wrk, medians over the runs.
        public struct HTTP: Sendable, Codable {
            /// wrk's open connections.
            public var connections: Int
            /// Requests per second, plain TCP.
            public var plainRequestsPerSecond: Double
            /// Requests per second, accelerated.
            public var acceleratedRequestsPerSecond: Double
            /// Median request latency, plain TCP, in milliseconds.
            public var plainP50Ms: Double
            /// Median request latency, accelerated, in milliseconds.
            public var acceleratedP50Ms: Double
        }
    }

    /// Runs the whole benchmark, blocking for about (sizes × placements + 2 + HTTP) × repeats × 2 ×
    /// ``seconds`` plus the calibration.
    /// Makes a cgroup `strait-bench-PID` and a pin folder, enables the accelerator there and
    /// removes all three on return, error or interrupt (children left in the cgroup are killed).
    /// Throws ``BenchError/conflict(_:)`` when acceleration is on system-wide,
    /// ``BenchError/interrupted`` once `shouldStop` returns true (checked between runs).
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        if Accelerator.isEnabled() {
            throw BenchError.conflict("acceleration is enabled system-wide (\(Accelerator.defaultPinDirectory)): plain runs would be accelerated too. Run `strait accel disable` first.")
        }
        let name = "strait-bench-\(getpid())"
        try BPFFS.ensureMounted()
        let cgroup = try Cgroup.root().makeChild(named: name)
        let pinDirectory = BPFFS.defaultMount + "/" + name
        defer {
            try? BPFFS.removeTree(pinDirectory)
            for pid in cgroup.processes() { kill(pid, SIGKILL) }
            for _ in 0..<50 where cgroup.exists {
                if (try? cgroup.remove()) != nil { break }
                usleep(20_000)
            }
        }
        if calibration != nil { progress("calibrating (as `strait accel enable` does)") }
        let accelerator = try Accelerator.enable(cgroup: cgroup, policy: policy, pinDirectory: pinDirectory + "/accel", calibration: calibration)
        defer { try? accelerator.disable() }
        let calibrated = try accelerator.calibration()
        let bulkSizes = AccelCalibration.describe(try accelerator.redirectedBulkSizes())
        let streamSizes = AccelCalibration.describe(try accelerator.redirectedStreamSizes())
        progress("bulk sends redirected: \(bulkSizes); small-write streams redirected: \(streamSizes)")

        let iperf = Iperf3()
        let inside = Launcher(cgroupPath: cgroup.path)
        var rows: [Report.Row] = []
        for placement in placements {
            for size in messageSizes {
                var plain: [Double] = [], accelerated: [Double] = [], always: [Double] = []
                for round in 0..<repeats {
                    if shouldStop() { throw BenchError.interrupted }
                    // Alternate which goes first, so slow drift does not favour one side.
                    for useAcceleration in round % 2 == 0 ? [false, true] : [true, false] {
                        let value = try iperf.throughput(
                            messageBytes: size, seconds: seconds, port: BenchPorts.free(), affinity: placement.affinity, launcher: useAcceleration ? inside : .plain)
                        if useAcceleration { accelerated.append(value) } else { plain.append(value) }
                    }
                    if includeAlwaysRedirect {
                        var classic = policy
                        classic.adaptive = false
                        try accelerator.setPolicy(classic)
                        always.append(try iperf.throughput(messageBytes: size, seconds: seconds, port: BenchPorts.free(), affinity: placement.affinity, launcher: inside))
                        try accelerator.setPolicy(policy)
                    }
                }
                let row = Report.Row(
                    messageBytes: size, placement: placement, plainGbitS: median(plain), acceleratedGbitS: median(accelerated),
                    alwaysRedirectGbitS: always.isEmpty ? nil : median(always))
                progress(String(format: "%@ %@: plain %.2f Gbit/s, accelerated %.2f Gbit/s", placement.rawValue, formatBytes(size), row.plainGbitS, row.acceleratedGbitS))
                rows.append(row)
            }
        }

        let latency = try pingPong(accelerator: accelerator, inside: inside, shouldStop: shouldStop)
        progress(String(format: "ping-pong %d B, CPUs as scheduled: p50 plain %.1f µs, accelerated %.1f µs (%.1f%% of its sends redirected)", latencyMessageBytes, latency.plainP50Us, latency.acceleratedP50Us, latency.redirectedShare * 100))
        let latencyOneCPU = try onCPU0 { try pingPong(accelerator: accelerator, inside: inside, shouldStop: shouldStop) }
        progress(String(format: "ping-pong %d B, one CPU: p50 plain %.1f µs, accelerated %.1f µs (%.1f%% of its sends redirected)", latencyMessageBytes, latencyOneCPU.plainP50Us, latencyOneCPU.acceleratedP50Us, latencyOneCPU.redirectedShare * 100))

        var http: Report.HTTP?
        if let httpServer {
            let wrk = Wrk(server: httpServer)
            var plain: [HTTPBenchmark.Measurement] = [], accelerated: [HTTPBenchmark.Measurement] = []
            for round in 0..<repeats {
                if shouldStop() { throw BenchError.interrupted }
                for useAcceleration in round % 2 == 0 ? [false, true] : [true, false] {
                    let value = try wrk.keepAlive(connections: httpConnections, seconds: seconds, port: BenchPorts.free(), launcher: useAcceleration ? inside : .plain)
                    if useAcceleration { accelerated.append(value) } else { plain.append(value) }
                }
            }
            http = Report.HTTP(
                connections: httpConnections,
                plainRequestsPerSecond: median(plain.map(\.requestsPerSecond)), acceleratedRequestsPerSecond: median(accelerated.map(\.requestsPerSecond)),
                plainP50Ms: median(plain.map(\.p50Milliseconds)), acceleratedP50Ms: median(accelerated.map(\.p50Milliseconds)))
            progress(String(format: "keep-alive HTTP: plain %.0f req/s, accelerated %.0f req/s", http!.plainRequestsPerSecond, http!.acceleratedRequestsPerSecond))
        }

        let unix = try UnixStream.throughput(messageBytes: 65_536, seconds: seconds)
        return Report(
            throughput: rows, latency: latency, latencyOneCpu: latencyOneCPU, http: http, afUnixGbitS: unix, mode: policy.adaptive ? "adaptive" : "always",
            calibration: calibrated, redirectedBulkSizes: bulkSizes, redirectedStreamSizes: streamSizes)
    }
}

extension AccelBenchmark {
    /// sockperf TCP ping-pong, plain and accelerated alternating, `repeats` times each; medians,
    /// and the share of the accelerated runs' sends that the kernel counters saw redirected.
    func pingPong(accelerator: Accelerator, inside: Launcher, shouldStop: () -> Bool) throws -> Report.Latency {
        let sockperf = Sockperf()
        var plain: [Sockperf.Latency] = [], accelerated: [Sockperf.Latency] = []
        var sends = (redirected: UInt64(0), all: UInt64(0))
        for round in 0..<repeats {
            if shouldStop() { throw BenchError.interrupted }
            for useAcceleration in round % 2 == 0 ? [false, true] : [true, false] {
                let before = try accelerator.counters()
                let value = try sockperf.pingPong(messageBytes: latencyMessageBytes, seconds: seconds, port: BenchPorts.free(), launcher: useAcceleration ? inside : .plain)
                let after = try accelerator.counters()
                guard useAcceleration else {
                    plain.append(value)
                    continue
                }
                accelerated.append(value)
                // Only the accelerated runs' sends: the share is of what the accelerator saw of them.
                sends.redirected += after.redirected_messages - before.redirected_messages
                sends.all += (after.redirected_messages + after.fallback_stack_messages + after.fallback_no_peer_messages)
                    - (before.redirected_messages + before.fallback_stack_messages + before.fallback_no_peer_messages)
            }
        }
        return Report.Latency(
            messageBytes: latencyMessageBytes,
            plainP50Us: median(plain.map(\.p50Microseconds)), acceleratedP50Us: median(accelerated.map(\.p50Microseconds)),
            plainP99Us: median(plain.map(\.p99Microseconds)), acceleratedP99Us: median(accelerated.map(\.p99Microseconds)),
            redirectedShare: sends.all > 0 ? Double(sends.redirected) / Double(sends.all) : 0)
    }
}

/// Runs `body` with this process, its threads and every child it starts on CPU 0, then restores
/// the affinity it had: round trips without the cross-CPU wake-ups that dominate them on a small
/// VM. Costs two `taskset` runs.
func onCPU0<T>(_ body: () throws -> T) throws -> T {
    let original = try ProcessRunner().run(["taskset", "-c", "-p", "\(getpid())"], timeout: 5)
        .split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? "0-\(ProcessInfo.processInfo.activeProcessorCount - 1)"
    _ = try ProcessRunner().run(["taskset", "-a", "-c", "-p", "0", "\(getpid())"], timeout: 5)
    defer { _ = try? ProcessRunner().run(["taskset", "-a", "-c", "-p", original, "\(getpid())"], timeout: 5) }
    return try body()
}

/// Why a benchmark stopped without a report; what it made is removed either way.
public enum BenchError: Error, CustomStringConvertible {
    case conflict(String)
    case interrupted

    /// The reason, for the operator; the CLI prints it as is.
    public var description: String {
        switch self {
        case .conflict(let why): why
        case .interrupted: "interrupted; everything the benchmark made was removed"
        }
    }
}

/// Parses `64,256,1k,4k,64k` (k = 1024, m = 1048576).
public func parseSizes(_ text: String, maximum: Int = 1 << 30) -> [Int]? {
    let sizes = text.split(separator: ",", omittingEmptySubsequences: false).map { item -> Int? in
        let lower = item.trimmingCharacters(in: .whitespaces).lowercased()
        let (digits, scale) = lower.hasSuffix("k") ? (lower.dropLast(), 1024) : lower.hasSuffix("m") ? (lower.dropLast(), 1 << 20) : (Substring(lower), 1)
        guard let value = Int(digits), value > 0 else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        return overflow || bytes > maximum ? nil : bytes
    }
    guard !sizes.isEmpty, sizes.allSatisfy({ $0 != nil }) else { return nil }
    return sizes.map { $0! }
}
