import ArgumentParser
import Foundation
import StraitBench
import StraitCLI
import StraitLimit

struct BenchLimit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limit",
        abstract: "Rate achieved against rate set, 10 Mbit/s to 10 Gbit/s: Strait per connection (sock_ops pacing) and in aggregate (EDT, fq) against tc tbf, with an unlimited connection's ping-pong latency alongside."
    )

    @Option(help: "Rates, comma-separated (10mbit,100mbit,1gbit,10gbit).") var rates = "10mbit,100mbit,1gbit,10gbit"
    @Option(help: "Seconds per measurement.") var duration: Double = 3
    @Option(help: "Connections of the aggregate and tbf runs.") var connections = 4
    @Option(help: "Interleaved rounds (the report keeps medians).") var rounds = 3
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Also draw achieved/set per method to this SVG file.") var svg: String?

    func run() throws {
        Self.bootstrapLogging()
        let parsed = rates.split(separator: ",").map { LimitRate(parsing: String($0)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { throw ValidationError("--rates: e.g. 10mbit,100mbit,1gbit,10gbit") }
        guard duration >= 2, duration <= 30 else { throw ValidationError("--duration: between 2 and 30 seconds") }
        guard (1...64).contains(connections) else { throw ValidationError("--connections: 1 to 64") }
        guard (1...9).contains(rounds) else { throw ValidationError("--rounds: 1 to 9") }
        var benchmark = LimitBenchmark()
        benchmark.rates = parsed.map { $0! }
        benchmark.seconds = duration
        benchmark.connections = connections
        benchmark.rounds = rounds
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            try LimitBenchmarkChart(report: report).render().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func render(_ report: LimitBenchmark.Report) -> String {
        var rows = [["set", "method", "conns", "achieved Mbit/s", "achieved/set", "ping p50 µs", "vs idle"]]
        for row in report.rows {
            rows.append([
                LimitRate(bitsPerSecond: UInt64(row.setMbps * 1e6)).description, row.method.rawValue, String(row.connections),
                String(format: "%.1f", row.achievedMbps), String(format: "%.3f", row.achievedOverSet),
                String(format: "%.1f", row.pingP50Us), ratio(row.pingP50Us, report.idlePingP50Us),
            ])
        }
        let notes = report.unavailable.sorted { $0.key < $1.key }.map { "\n\($0.key): not measured: \($0.value)" }.joined()
        return String(format: "veth between two namespaces, medians of %d rounds of %.0f s runs; unlimited: %.0f Mbit/s with ping-pong p50 %.1f µs beside it; idle ping-pong p50 %.1f µs (p99 %.1f µs):\n\n", report.rounds, report.seconds, report.unlimitedMbps, report.unlimitedPingP50Us, report.idlePingP50Us, report.idlePingP99Us) + table(rows) + notes
    }
}
