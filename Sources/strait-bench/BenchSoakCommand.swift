import ArgumentParser
import StraitBench
import StraitCLI

/// `strait bench soak`: the command side of ``SoakBenchmark`` (options and the table).
struct BenchSoak: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Normal and hostile clients through every proxy datapath for N minutes, with reloads and in-place restarts; reports errors, peak memory and descriptors."
    )

    @Option(help: "Minutes to run (0.1 to 120).") var minutes: Double = 2
    @Option(help: "Client threads.") var workers: Int = 8
    @Option(help: "Seconds between configuration reloads (0: none).") var reloadSeconds: Double = 5
    @Option(help: "Seconds between in-place restarts (0: none).") var restartSeconds: Double = 30
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func run() throws {
        Self.bootstrapLogging()
        guard minutes >= 0.1, minutes <= 120 else { throw ValidationError("--minutes: from 0.1 to 120") }
        guard (1...64).contains(workers) else { throw ValidationError("--workers: from 1 to 64") }
        guard (0...3600).contains(reloadSeconds), (0...3600).contains(restartSeconds) else { throw ValidationError("--reload-seconds, --restart-seconds: from 0 to 3600") }
        var benchmark = SoakBenchmark()
        benchmark.minutes = minutes
        benchmark.workers = workers
        benchmark.reloadSeconds = reloadSeconds
        benchmark.restartSeconds = restartSeconds
        _ = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
    }

    static func render(_ report: SoakBenchmark.Report) -> String {
        func counts(_ values: [String: Int]) -> String { values.isEmpty ? "none" : values.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") }
        let rows = [
            ["", "RSS MiB", "descriptors", "MemAvailable MiB", "TCP memory MiB", "proxy connections"],
            ["baseline"] + values(report.baseline), ["peak"] + values(report.peak), ["end"] + values(report.end),
        ]
        return """
        Soak: \(Int(report.seconds)) s, \(report.reloads) reloads, \(report.restarts) restarts\(report.sockmapUnavailable.map { " (sockmap off: \($0))" } ?? "")
        connections served: \(report.connections), bytes verified: \(report.bytesVerified >> 20) MiB
        by behaviour: \(counts(report.byBehavior))
        client errors (not caused by the client itself): \(counts(report.clientErrors))\(report.clientErrorsByDatapath.sorted { $0.key < $1.key }.map { "\n  on \($0.key) (behaviour:kind): \(counts($0.value))" }.joined())
        proxy errors by kind: \(counts(report.proxyErrors))
        largest push a never-reading client made before it stalled: \(report.largestStalledPush >> 20) MiB

        """ + table(rows)
    }

    static func values(_ sample: SoakBenchmark.Resources) -> [String] {
        [sample.residentMiB, sample.descriptors, sample.memoryAvailableMiB, sample.tcpMemoryMiB, sample.activeConnections].map(String.init)
    }
}
