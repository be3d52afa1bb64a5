import Foundation

/// `strait bench net`, part 1: the StraitNet and SwiftNIO plaintext HTTP servers side by side,
/// each in its own process with the same thread count, loaded by `wrk` (nobody here wrote it).
///
/// Each run starts one server, waits for its port, runs `wrk -t1 -c N -d D --latency`, reads
/// requests/s and the 50th/99th latency percentiles from wrk's report, reads the server's peak RSS
/// (`VmHWM`) and stops it. Servers and wrk talk over 127.0.0.1 only.
public struct HTTPBenchmark: Sendable {
    /// One server's figures at one connection count.
    public struct Measurement: Sendable, Codable, Equatable {
        public var requestsPerSecond: Double
        public var p50Milliseconds: Double
        public var p99Milliseconds: Double
        public var peakRSSKiB: Int
    }

    /// Both servers at one connection count.
    public struct Row: Sendable, Codable, Equatable {
        public var connections: Int
        public var straitnet: Measurement
        public var swiftnio: Measurement
    }

    /// Folder holding the `straitnet-http` and `swiftnio-http` executables (the build's products).
    public var binaries: URL
    public var connections: [Int] = [64, 256, 1000]
    public var seconds = 10
    public var serverThreads = 2
    /// Ports in Strait's range for this benchmark.
    public var straitnetPort = 47080
    public var swiftnioPort = 47081

    public init(binaries: URL) { self.binaries = binaries }

    /// Runs every connection count against both servers, one server at a time.
    public func run() throws -> [Row] {
        try connections.map { count in
            Row(
                connections: count,
                straitnet: try measure(server: "straitnet-http", port: straitnetPort, connections: count),
                swiftnio: try measure(server: "swiftnio-http", port: swiftnioPort, connections: count))
        }
    }

    /// `{"http":[{"connections":N,"straitnet_rps":A,"swiftnio_rps":B,"straitnet_p99_ms":C,"swiftnio_p99_ms":D,...}]}`
    public static func json(_ rows: [Row]) -> String {
        let entries = rows.map { row in
            "{\"connections\":\(row.connections),\"straitnet_rps\":\(row.straitnet.requestsPerSecond),\"swiftnio_rps\":\(row.swiftnio.requestsPerSecond),"
                + "\"straitnet_p50_ms\":\(row.straitnet.p50Milliseconds),\"swiftnio_p50_ms\":\(row.swiftnio.p50Milliseconds),"
                + "\"straitnet_p99_ms\":\(row.straitnet.p99Milliseconds),\"swiftnio_p99_ms\":\(row.swiftnio.p99Milliseconds),"
                + "\"straitnet_peak_rss_kib\":\(row.straitnet.peakRSSKiB),\"swiftnio_peak_rss_kib\":\(row.swiftnio.peakRSSKiB)}"
        }
        return "{\"http\":[\(entries.joined(separator: ","))]}"
    }

    /// A table for people.
    public static func table(_ rows: [Row]) -> String {
        var lines = ["conns  server     req/s       p50 ms   p99 ms   peak RSS KiB"]
        for row in rows {
            for (name, value) in [("straitnet", row.straitnet), ("swiftnio", row.swiftnio)] {
                lines.append(
                    String(format: "%5d  %-9@ %10.0f  %7.2f  %7.2f  %8d", row.connections, name as NSString, value.requestsPerSecond, value.p50Milliseconds, value.p99Milliseconds, value.peakRSSKiB))
            }
            lines.append(String(format: "       ratio     %10.2fx          %7.2fx", row.straitnet.requestsPerSecond / row.swiftnio.requestsPerSecond, row.straitnet.p99Milliseconds / row.swiftnio.p99Milliseconds))
        }
        return lines.joined(separator: "\n")
    }

    func measure(server name: String, port: Int, connections: Int) throws -> Measurement {
        let server = Process()
        server.executableURL = binaries.appendingPathComponent(name)
        server.arguments = [String(port), String(serverThreads)]
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        try waitForPort(port)
        let wrk = Process()
        wrk.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        wrk.arguments = ["-t1", "-c\(connections)", "-d\(seconds)", "--latency", "http://127.0.0.1:\(port)/"]
        let output = Pipe()
        wrk.standardOutput = output
        wrk.standardError = FileHandle.nullDevice
        try wrk.run()
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        wrk.waitUntilExit()
        var measurement = try Self.parse(wrk: report)
        measurement.peakRSSKiB = Self.peakRSS(of: server.processIdentifier)
        return measurement
    }

    /// Reads "Requests/sec:" and the 50%/99% lines of wrk's `--latency` report.
    static func parse(wrk report: String) throws -> Measurement {
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

    /// wrk prints durations as "812.00us", "1.23ms" or "2.01s".
    static func milliseconds(_ text: Substring) -> Double {
        for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] where text.hasSuffix(suffix) {
            return (Double(text.dropLast(suffix.count)) ?? 0) * scale
        }
        return 0
    }

    static func peakRSS(of pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return 0 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }

    private func waitForPort(_ port: Int) throws {
        for _ in 0..<200 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if connected == 0 { return }
            usleep(25_000)
        }
        throw BenchmarkError.serverDidNotStart(port)
    }
}

public enum BenchmarkError: Error, CustomStringConvertible {
    case serverDidNotStart(Int)
    case unreadableReport(String)

    public var description: String {
        switch self {
        case .serverDidNotStart(let port): "no server answered on 127.0.0.1:\(port) within 5 s"
        case .unreadableReport(let report): "could not read wrk's report:\n\(report)"
        }
    }
}
