import Foundation
import StraitBenchSupport
import StraitNetBench
import StraitSystem

/// iperf3 (from Debian) as the throughput peer: one server per run, one client stream.
public struct Iperf3: Sendable {
    /// Starts and stops the iperf3 processes; each run's server and client are children of this
    /// process.
    public let runner = ProcessRunner()

    /// A runner for iperf3 from PATH; nothing starts until a run.
    public init() {}

    /// Runs one client stream of `messageBytes` writes for `seconds` against a fresh one-off server
    /// on `port`, both started through `launcher` (which may place them in a cgroup), pinned as
    /// iperf3's `-A client,server` says when `affinity` is given. Returns the receiver's Gbit/s.
    public func throughput(messageBytes: Int, seconds: Double, port: UInt16, affinity: String? = nil, launcher: Launcher) throws -> Double {
        let server = try runner.start(launcher.command(["iperf3", "-s", "-1", "-p", "\(port)", "-B", "127.0.0.1"]))
        defer { server.stop() }
        try BenchPorts.waitForListener(port: port, timeout: 5)
        let output = try runner.run(
            launcher.command(["iperf3", "-c", "127.0.0.1", "-p", "\(port)", "-t", String(Int(seconds.rounded())), "-l", "\(messageBytes)", "-J"] + (affinity.map { ["-A", $0] } ?? [])),
            timeout: seconds + 15)
        return try Self.receivedGbits(fromJSON: output)
    }

    /// Reads `end.sum_received.bits_per_second` from iperf3's `-J` output.
    static func receivedGbits(fromJSON text: String) throws -> Double {
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw ToolFailure(command: ["iperf3"], status: 0, output: "no JSON object in iperf3's output")
        }
        if let error = object["error"] as? String {
            throw ToolFailure(command: ["iperf3"], status: 1, output: error)
        }
        guard let end = object["end"] as? [String: Any], let received = end["sum_received"] as? [String: Any],
            let bits = received["bits_per_second"] as? Double
        else { throw ToolFailure(command: ["iperf3"], status: 0, output: "iperf3's JSON has no end.sum_received.bits_per_second") }
        return bits / 1e9
    }
}

/// sockperf (from Debian) as the latency peer: TCP ping-pong.
public struct Sockperf: Sendable {
    /// Starts and stops the sockperf processes; each run's server and client are children of this
    /// process.
    public let runner = ProcessRunner()

    /// A runner for sockperf from PATH; nothing starts until a run.
    public init() {}

    /// Round-trip latency percentiles of one run, as sockperf reports them, in microseconds.
    public struct Latency: Sendable, Codable {
        /// Median round trip.
        public var p50Microseconds: Double
        /// 99th-percentile round trip.
        public var p99Microseconds: Double
    }

    /// Ping-pong of `messageBytes` messages for `seconds`.
    public func pingPong(messageBytes: Int, seconds: Double, port: UInt16, launcher: Launcher) throws -> Latency {
        let server = try runner.start(launcher.command(["sockperf", "sr", "--tcp", "-i", "127.0.0.1", "-p", "\(port)"]))
        defer { server.stop() }
        try BenchPorts.waitForListener(port: port, timeout: 5)
        let output = try runner.run(
            launcher.command(["sockperf", "pp", "--tcp", "-i", "127.0.0.1", "-p", "\(port)", "-t", String(format: "%.0f", max(1, seconds)), "-m", "\(messageBytes)"]),
            timeout: seconds + 15)
        return try Self.parse(output)
    }

    /// Reads the "percentile 50.000 = X" and "percentile 99.000 = Y" lines (microseconds).
    static func parse(_ text: String) throws -> Latency {
        func percentile(_ label: String) -> Double? {
            for line in text.split(separator: "\n") where line.contains("percentile \(label)") {
                if let value = line.split(separator: "=").last.flatMap({ Double($0.trimmingCharacters(in: .whitespaces)) }) { return value }
            }
            return nil
        }
        guard let p50 = percentile("50.000"), let p99 = percentile("99.000") else {
            throw ToolFailure(command: ["sockperf"], status: 0, output: "no percentiles in sockperf's output: \(text.suffix(400))")
        }
        return Latency(p50Microseconds: p50, p99Microseconds: p99)
    }
}

/// wrk (from Debian) against `straitnet-http` (StraitNet's HTTP/1.1 bench server): small responses
/// on kept-alive connections, the request/response traffic of a real service.
public struct Wrk: Sendable {
    /// Starts and stops wrk and the server; both are children of this process for the run.
    public let runner = ProcessRunner()
    /// Path of the `straitnet-http` executable.
    public let server: String

    /// A runner against the `straitnet-http` executable at `server`; nothing starts until a run.
    public init(server: String) { self.server = server }

    /// One wrk thread with `connections` connections for `seconds` against a fresh server with one
    /// event loop on `port`, both started through `launcher`.
    public func keepAlive(connections: Int, seconds: Double, port: UInt16, launcher: Launcher) throws -> HTTPBenchmark.Measurement {
        let process = try runner.start(launcher.command([server, "\(port)", "1"]))
        defer { process.stop() }
        try BenchPorts.waitForListener(port: port, timeout: 5)
        let output = try runner.run(
            launcher.command(["wrk", "-t1", "-c\(connections)", "-d\(Int(seconds.rounded()))s", "--latency", "http://127.0.0.1:\(port)/"]),
            timeout: seconds + 15)
        return try HTTPBenchmark.parse(wrk: output)
    }
}

/// How peer processes are started: as they are, or first moved into a cgroup (through `sh`, which
/// joins the cgroup and then execs the tool, so the tool's sockets are born inside it).
public struct Launcher: Sendable {
    /// The cgroup v2 directory the tools join before exec; nil: they start where this process is.
    public let cgroupPath: String?

    /// Starts tools as they are, in this process's cgroup.
    public static let plain = Launcher(cgroupPath: nil)

    /// A launcher into the cgroup at `cgroupPath` (nil: none). Nothing is checked until a command
    /// runs.
    public init(cgroupPath: String?) { self.cgroupPath = cgroupPath }

    /// `arguments` as is, or wrapped in `/bin/sh -c` that writes the shell's pid to the cgroup's
    /// `cgroup.procs` and execs the tool (arguments single-quoted). Pure: builds the command, runs
    /// nothing.
    public func command(_ arguments: [String]) -> [String] {
        guard let cgroupPath else { return arguments }
        let quoted = arguments.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        return ["/bin/sh", "-c", "echo $$ > '\(cgroupPath)/cgroup.procs' && exec \(quoted)"]
    }
}
