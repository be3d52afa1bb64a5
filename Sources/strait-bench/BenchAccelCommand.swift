import ArgumentParser
import Foundation
import StraitBench
import StraitBenchSupport
import StraitCLI
import StraitSystem

struct BenchAccel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accel",
        abstract: "iperf3 throughput per message size and CPU placement, sockperf 64 B ping-pong and keep-alive HTTP (wrk): plain TCP against accelerated, in a private cgroup, calibrated as `strait accel enable` is."
    )

    @Option(help: "Message sizes (bytes per write), comma-separated; k and m suffixes.") var sizes = "64,256,1k,4k,16k,64k,256k,1m"
    @Option(help: "iperf3 placement: same (client and server on CPU 0), split (CPU 0 and 1), or both.") var placement: PlacementChoice = .both
    @Flag(help: "Skip the calibration: every bulk size redirects (or as --bulk-bytes says).") var noCalibrate = false
    @Option(help: "Bulk sends of at least this many bytes redirect, overriding the calibration.") var bulkBytes: UInt32?
    @Option(help: "Seconds per measurement.") var duration: Double = 3
    @Option(name: .customLong("repeat"), help: "Measure each point this many times, alternating plain and accelerated; the median is reported.") var repetitions: Int = 1
    @Flag(help: "Also measure every direction redirecting from its first send (the classic sk_msg setup).") var withAlways = false
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Also draw throughput by message size to this SVG file.") var svg: String?

    enum PlacementChoice: String, ExpressibleByArgument { case same, split, both }

    func run() throws {
        Self.bootstrapLogging()
        guard let parsed = parseSizes(sizes) else { throw ValidationError("--sizes: expected sizes such as 64,256,1k,64k") }
        guard duration >= 1, duration <= 60 else { throw ValidationError("--duration: from 1 to 60 seconds") }
        guard (1...9).contains(repetitions) else { throw ValidationError("--repeat: from 1 to 9") }
        var benchmark = AccelBenchmark()
        benchmark.messageSizes = parsed
        benchmark.seconds = duration
        benchmark.repeats = repetitions
        benchmark.includeAlwaysRedirect = withAlways
        benchmark.placements = placement == .both ? AccelBenchmark.Placement.allCases : [placement == .same ? .same : .split]
        if ProcessInfo.processInfo.activeProcessorCount < 2 { benchmark.placements = [.same] }
        if noCalibrate { benchmark.calibration = nil }
        if let bulkBytes {
            benchmark.policy.bulkBytes = bulkBytes
            benchmark.policy.bulkDecision = .byHand
        }
        let server = URL(fileURLWithPath: Executable.current).deletingLastPathComponent().appendingPathComponent("straitnet-http").path
        benchmark.httpServer = FileManager.default.isExecutableFile(atPath: server) ? server : nil
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            var series: [SVGChart.Series] = []
            for placement in benchmark.placements {
                let rows = report.throughput.filter { $0.placement == placement }
                let label = benchmark.placements.count > 1 ? (placement == .same ? " (same CPU)" : " (two CPUs)") : ""
                series.append(SVGChart.Series(name: "plain TCP" + label, color: placement == .same ? "#888888" : "#bbbbbb", points: rows.map { ($0.messageBytes, $0.plainGbitS) }))
                series.append(SVGChart.Series(name: "Strait accel (\(report.mode))" + label, color: placement == .same ? "#1f77b4" : "#2ca02c", points: rows.map { ($0.messageBytes, $0.acceleratedGbitS) }))
                if rows.allSatisfy({ $0.alwaysRedirectGbitS != nil }) {
                    series.append(SVGChart.Series(name: "sk_msg always redirect" + label, color: "#d62728", points: rows.map { ($0.messageBytes, $0.alwaysRedirectGbitS!) }))
                }
            }
            let chart = SVGChart(title: "Same-host TCP throughput (iperf3, one stream)", yLabel: "Gbit/s", series: series,
                                 reference: ("AF_UNIX stream, 64 KiB: \(String(format: "%.1f", report.afUnixGbitS)) Gbit/s", report.afUnixGbitS))
            try chart.render().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func render(_ report: AccelBenchmark.Report) -> String {
        let withAlways = report.throughput.allSatisfy { $0.alwaysRedirectGbitS != nil }
        var rows = [["placement", "message", "plain Gbit/s", "accelerated Gbit/s", "ratio"] + (withAlways ? ["always-redirect Gbit/s", "ratio"] : [])]
        for row in report.throughput {
            var line = [row.placement == .same ? "same CPU" : "two CPUs", formatBytes(row.messageBytes), String(format: "%.2f", row.plainGbitS), String(format: "%.2f", row.acceleratedGbitS), ratio(row.acceleratedGbitS, row.plainGbitS)]
            if withAlways, let always = row.alwaysRedirectGbitS { line += [String(format: "%.2f", always), ratio(always, row.plainGbitS)] }
            rows.append(line)
        }
        let at64k = report.throughput.first { $0.messageBytes == 65_536 }
        var text = "Bulk sends redirected: \(report.redirectedBulkSizes); small-write streams redirected: \(report.redirectedStreamSizes)"
        if let calibration = report.calibration {
            text += String(format: "\n(calibrated in %.1f s, %d pairs per size and placement; median ratio, worst placement: ", calibration.elapsedSeconds, calibration.pairs)
            text += calibration.points.map { formatBytes($0.messageBytes) + String(format: " %.2fx", $0.worstRatio) }.joined(separator: ", ") + ")"
        }
        text += "\n\nSame-host TCP, plain against Strait accel (\(report.mode)), iperf3 one stream:\n\n" + table(rows)
        text += String(format: "\n\nAF_UNIX stream, 64 KiB writes, same run: %.2f Gbit/s", report.afUnixGbitS)
        if let at64k { text += "  (accelerated 64 KiB reaches " + ratio(at64k.acceleratedGbitS, report.afUnixGbitS) + " of it)" }
        for (latency, placement) in [(report.latency, "CPUs as scheduled"), (report.latencyOneCpu, "one CPU")] {
            text += "\n\n" + table([
                ["ping-pong \(latency.messageBytes) B, \(placement)", "plain µs", "accelerated µs", "ratio"],
                ["p50", String(format: "%.1f", latency.plainP50Us), String(format: "%.1f", latency.acceleratedP50Us), ratio(latency.acceleratedP50Us, latency.plainP50Us)],
                ["p99", String(format: "%.1f", latency.plainP99Us), String(format: "%.1f", latency.acceleratedP99Us), ratio(latency.acceleratedP99Us, latency.plainP99Us)],
            ])
            text += String(format: "\n(accelerated: %.1f%% of its sends redirected)", latency.redirectedShare * 100)
        }
        if let http = report.http {
            text += "\n\n" + table([
                ["keep-alive HTTP/1.1, wrk -c\(http.connections)", "plain", "accelerated", "ratio"],
                ["requests/s", String(format: "%.0f", http.plainRequestsPerSecond), String(format: "%.0f", http.acceleratedRequestsPerSecond), ratio(http.acceleratedRequestsPerSecond, http.plainRequestsPerSecond)],
                ["p50 ms", String(format: "%.3f", http.plainP50Ms), String(format: "%.3f", http.acceleratedP50Ms), ratio(http.acceleratedP50Ms, http.plainP50Ms)],
            ])
        } else {
            text += "\n\n(keep-alive HTTP row left out: straitnet-http is not beside this executable; `swift build -c release --product straitnet-http`)"
        }
        return text
    }
}

/// Runs a benchmark the way every `strait bench` command does: progress lines on standard error
/// (none with `--json`), Ctrl-C ending it cleanly (what it started is removed), then one JSON object
/// or the rendered table on standard output.
func runBenchmark<Report: Encodable>(
    json: Bool, render: (Report) -> String,
    _ run: (_ progress: @escaping @Sendable (String) -> Void, _ shouldStop: @escaping @Sendable () -> Bool) throws -> Report
) throws -> Report {
    let progress: @Sendable (String) -> Void = { line in
        if !json { FileHandle.standardError.write(Data(("  " + line + "\n").utf8)) }
    }
    let stop = SignalFlag.interrupt()
    let report = try run(progress, { stop.isRaised })
    if json { try printJSON(report) } else { print(render(report)) }
    return report
}

func ratio(_ value: Double, _ base: Double) -> String {
    base > 0 ? String(format: "%.2fx", value / base) : "-"
}
