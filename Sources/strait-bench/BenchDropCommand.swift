import ArgumentParser
import Foundation
import StraitBench
import StraitCLI
import StraitSystem

struct BenchDrop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drop",
        abstract: "A UDP flood over a veth pair dropped by source prefix: Strait XDP against an nftables set and iptables, with 10, 10,000 and 100,000 prefixes."
    )

    @Option(help: "Prefix counts, comma-separated.") var prefixes = "10,10000,100000"
    @Option(help: "Seconds of flood per measurement.") var duration: Double = 3
    @Option(help: "The CPU the sender and the receive softirq run on.") var cpu = 1
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Also draw drops per CPU-second to this SVG file.") var svg: String?

    func validate() throws {
        let cpus = sysconf(CInt(_SC_NPROCESSORS_ONLN))
        guard cpu >= 0, cpu < cpus else { throw ValidationError("--cpu: a CPU number from 0 to \(cpus - 1) (got \(cpu))") }
        try requireSeconds(duration, in: 0.1...20, option: "--duration")
    }

    func run() throws {
        Self.bootstrapLogging()
        let counts = prefixes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ (1...200_000).contains($0) }) else { throw ValidationError("--prefixes: counts from 1 to 200000, e.g. 10,10000,100000") }
        var benchmark = DropBenchmark()
        benchmark.prefixCounts = counts
        benchmark.seconds = duration
        benchmark.cpu = cpu
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            try DropBenchmarkChart(report: report).render().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func render(_ report: DropBenchmark.Report) -> String {
        var rows = [["prefixes", "method", "sent Mpps", "dropped Mpps", "softirq CPU", "M drops / CPU-s", "vs nftables", "setup s"]]
        for row in report.rows {
            let nft = report.rows.first { $0.prefixes == row.prefixes && $0.method == .nftablesSet }
            rows.append([
                String(row.prefixes), row.method.rawValue,
                String(format: "%.2f", row.sentPerSecond / 1e6), String(format: "%.2f", row.droppedPerSecond / 1e6),
                String(format: "%.0f%%", row.softirqShare * 100), String(format: "%.2f", row.droppedPerSoftirqSecond / 1e6),
                nft.map { ratio(row.droppedPerSoftirqSecond, $0.droppedPerSoftirqSecond) } ?? "-",
                String(format: "%.1f", row.setupSeconds),
            ])
        }
        return "UDP flood (\(report.frameBytes) B frames from an XDP live-frame generator, \(Int(report.seconds)) s each) over a veth pair, generator and receive softirq on CPU \(report.cpu), dropped by source prefix:\n\n" + table(rows)
    }
}
