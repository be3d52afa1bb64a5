import ArgumentParser
import Foundation
import StraitBench
import StraitBenchSupport
import StraitCLI
import StraitProxy
import StraitSystem

struct BenchProxy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "iperf3 throughput at 1, 16 and 128 KiB writes and sockperf 64 B ping-pong: direct, HAProxy (TCP mode) and strait proxy on each datapath."
    )

    @Option(help: "Message sizes (bytes per write), comma-separated; k and m suffixes.") var sizes = "1k,16k,128k"
    @Option(help: "Seconds per measurement.") var duration: Double = 3
    @Option(name: .customLong("repeat"), help: "Measure every path this many times, in rotated order; the median is reported.") var repetitions: Int = 1
    @Option(help: "Strait datapaths to measure, comma-separated (direct and HAProxy always run).") var datapaths = Datapath.allCases.map(\.rawValue).joined(separator: ",")
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Also draw throughput by message size to this SVG file.") var svg: String?
    @Option(help: ArgumentHelp("Another strait executable to compare with (the previous commit built into a scratch folder): every datapath then runs on it and on this tree's strait, both as child processes, interleaved.", valueName: "path")) var baseline: String?

    func run() throws {
        Self.bootstrapLogging()
        guard let parsed = parseSizes(sizes) else { throw ValidationError("--sizes: expected sizes such as 1k,16k,128k") }
        guard duration > 0, duration <= 30 else { throw ValidationError("--duration: between 0 and 30 seconds") }
        var benchmark = ProxyBenchmark()
        benchmark.messageSizes = parsed
        benchmark.seconds = duration
        guard (1...9).contains(repetitions) else { throw ValidationError("--repeat: from 1 to 9") }
        benchmark.repeats = repetitions
        benchmark.baseline = baseline
        benchmark.datapaths = try datapaths.split(separator: ",").map { name in
            guard let datapath = Datapath(rawValue: String(name)) else {
                throw ValidationError("--datapaths: \(name) is not one of \(Datapath.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return datapath
        }
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            let colors = ["copy": "#2ca02c", "splice": "#9467bd", "sockmap": "#d62728", "skmsg": "#8c564b", "auto": "#1f77b4"]
            var series = [
                SVGChart.Series(name: "direct", color: "#888888", points: report.throughput.map { ($0.messageBytes, $0.directGbitS) }),
                SVGChart.Series(name: "HAProxy (TCP mode)", color: "#ff7f0e", points: report.throughput.map { ($0.messageBytes, $0.haproxyGbitS) }),
            ]
            for path in Self.datapathOrder(report) {
                series.append(SVGChart.Series(name: "strait \(path)", color: colors[path] ?? "#000000", points: report.throughput.map { ($0.messageBytes, $0.straitGbitS[path] ?? 0) }))
            }
            let chart = SVGChart(title: "TCP proxy throughput on loopback (iperf3, one stream)", yLabel: "Gbit/s", series: series, reference: nil)
            try chart.render().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func datapathOrder(_ report: ProxyBenchmark.Report) -> [String] {
        Datapath.allCases.map(\.rawValue).filter { path in report.throughput.first?.straitGbitS[path] != nil }
    }

    static func render(_ report: ProxyBenchmark.Report) -> String {
        let paths = datapathOrder(report)
        var rows = [["write", "direct Gbit/s", "HAProxy", "÷direct"] + paths.flatMap { ["strait \($0)", "÷direct", "÷HAProxy"] }]
        for row in report.throughput {
            var line = [formatBytes(row.messageBytes), String(format: "%.2f", row.directGbitS), String(format: "%.2f", row.haproxyGbitS), ratio(row.haproxyGbitS, row.directGbitS)]
            for path in paths {
                let value = row.straitGbitS[path] ?? 0
                line += [String(format: "%.2f", value), ratio(value, row.directGbitS), ratio(value, row.haproxyGbitS)]
            }
            rows.append(line)
        }
        var text = "TCP proxy on loopback, iperf3 one stream:\n\n" + table(rows)
        if !(report.throughput.first?.baselineGbitS.isEmpty ?? true) {
            var comparison = [["write"] + paths.flatMap { ["\($0) Gbit/s", "baseline", "÷baseline"] }]
            for row in report.throughput {
                comparison.append([formatBytes(row.messageBytes)] + paths.flatMap { path -> [String] in
                    let value = row.straitGbitS[path] ?? 0, base = row.baselineGbitS[path] ?? 0
                    return [String(format: "%.2f", value), String(format: "%.2f", base), ratio(value, base)]
                })
            }
            text += "\n\nAgainst the baseline build (both as child processes):\n\n" + table(comparison)
        }
        for (latency, placement) in [(report.latency, "CPUs as scheduled"), (report.latencyOneCpu, "all on one CPU")] {
            var latencyRows = [["ping-pong \(latency.messageBytes) B, \(placement)", "p50 µs", "p99 µs", "p50 ÷direct", "p50 ÷HAProxy"]]
            latencyRows.append(["direct", String(format: "%.1f", latency.directP50Us), String(format: "%.1f", latency.directP99Us), "1.00x", ratio(latency.directP50Us, latency.haproxyP50Us)])
            latencyRows.append(["HAProxy", String(format: "%.1f", latency.haproxyP50Us), String(format: "%.1f", latency.haproxyP99Us), ratio(latency.haproxyP50Us, latency.directP50Us), "1.00x"])
            for path in paths {
                let p50 = latency.straitP50Us[path] ?? 0
                latencyRows.append(["strait \(path)", String(format: "%.1f", p50), String(format: "%.1f", latency.straitP99Us[path] ?? 0), ratio(p50, latency.directP50Us), ratio(p50, latency.haproxyP50Us)])
                if let base = latency.baselineP50Us[path] {
                    latencyRows.append(["baseline \(path)", String(format: "%.1f", base), String(format: "%.1f", latency.baselineP99Us[path] ?? 0), ratio(base, latency.directP50Us), ratio(base, latency.haproxyP50Us)])
                }
            }
            text += "\n\n" + table(latencyRows)
        }
        if let why = report.sockmapUnavailable { text += "\n\nsockmap, skmsg and auto not measured: \(why)" }
        return text
    }
}
