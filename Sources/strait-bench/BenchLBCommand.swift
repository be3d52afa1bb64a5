import ArgumentParser
import Foundation
import StraitBench
import StraitCLI
import StraitNet
import StraitProxy
import StraitSystem

struct BenchLB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lb",
        abstract: "Short connections per second and bulk throughput through Strait's socket LB, iptables DNAT (kube-proxy layout), nftables verdict-map DNAT and a direct connection, at 10, 1,000 and 10,000 services."
    )

    @Option(help: "Service counts, comma-separated.") var services = "10,1000,10000"
    @Option(help: "Seconds per measurement.") var duration: Double = 1
    @Option(help: "Interleaved rounds; the report gives medians.") var rounds = 3
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Also draw short connections per second to this SVG file.") var svg: String?

    func run() throws {
        Self.bootstrapLogging()
        let counts = services.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ (1...60_000).contains($0) }) else { throw ValidationError("--services: counts from 1 to 60000, e.g. 10,1000,10000") }
        guard duration > 0, duration <= 20 else { throw ValidationError("--duration: between 0 and 20 seconds") }
        guard (1...15).contains(rounds) else { throw ValidationError("--rounds: from 1 to 15") }
        var benchmark = LBBenchmark()
        benchmark.serviceCounts = counts
        benchmark.seconds = duration
        benchmark.rounds = rounds
        let binary = Executable.current
        benchmark.clientCommand = [binary, "lb-client"]
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            try LBBenchmarkChart(report: report).render().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func render(_ report: LBBenchmark.Report) -> String {
        var rows = [["services", "method", "short conn/s", "vs best netfilter", "bulk Gbit/s", "vs direct", "setup s"]]
        for row in report.rows {
            let netfilter = report.rows.filter { $0.services == row.services && ($0.method == .iptables || $0.method == .nftables) }.map(\.shortPerSecond).max() ?? 0
            let direct = report.rows.first { $0.services == row.services && $0.method == .direct }
            rows.append([
                String(row.services), row.method.rawValue, String(format: "%.0f", row.shortPerSecond), ratio(row.shortPerSecond, netfilter),
                String(format: "%.2f", row.bulkBitsPerSecond / 1e9), direct.map { ratio(row.bulkBitsPerSecond, $0.bulkBitsPerSecond) } ?? "-",
                String(format: "%.1f", row.setupSeconds),
            ])
        }
        return "Closed-loop client, one connection at a time (\(report.seconds) s per measurement, medians of \(report.rounds) interleaved rounds; \(report.iptablesVersion)):\n\n" + table(rows)
    }
}

/// The client process `strait bench lb` starts in each method's namespace.
struct BenchLBClient: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lb-client", abstract: "The client `strait bench lb` runs (internal).", shouldDisplay: false)

    @Option var target: String
    @Option var mode: String
    @Option var seconds: Double
    @Option var cgroup: String?
    @Option var netns: String

    func run() throws {
        guard let address = SocketAddress(parsing: target) else { throw ValidationError("--target: host:port") }
        guard mode == "short" || mode == "bulk" else { throw ValidationError("--mode: short or bulk") }
        print(try LBBenchmark.Client.run(target: address, bulk: mode == "bulk", seconds: seconds, cgroup: cgroup, namespace: netns))
    }
}
