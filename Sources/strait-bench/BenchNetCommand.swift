import ArgumentParser
import Foundation
import StraitBench
import StraitBenchSupport
import StraitCLI
import StraitNetBench
import StraitSystem

struct BenchNet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net",
        abstract: "StraitNet against SwiftNIO: plaintext HTTP under wrk, echo RPC over one multiplexed connection, heap allocations per request.",
        discussion: """
            Every server and every load client runs in its own process, one at a time, on 127.0.0.1 \
            (ports from 47000-47999). The peers (straitnet-http, swiftnio-http, straitnet-rpc, swiftnio-rpc, \
            libMallocInterposerSwift.so) are products of this package and are taken from the folder of \
            this strait binary: build everything with `swift build -c release` and run \
            `.build/release/strait bench net`. HTTP needs wrk.
            """
    )

    @Option(help: "Seconds of wrk per HTTP point (wrk -d).") var duration = 10
    @Option(help: "Seconds per RPC point (the first fifth, at most 1 s, is warm-up).") var rpcDuration = 5
    @Option(help: "wrk connection counts, comma-separated.") var connections = "64,256,1000"
    @Option(help: "RPC payload sizes in bytes, comma-separated.") var payloads = "128,4096"
    @Option(help: "Concurrent RPC callers, comma-separated.") var callers = "1,16,128"
    @Option(help: "Threads of each server (event loops).") var threads = 2
    @Flag(inversion: .prefixedNo, help: "Pin both HTTP servers' loop threads alike: loop i on CPU i modulo the core count (off by default: on a quiet 2-core machine it halved StraitNet's requests/s).") var pinLoops = false
    @Option(name: .customLong("repeat"), help: "Measure each HTTP and RPC point this many times, alternating the two sides; the median is reported.") var repetitions = 1
    @Option(help: "Which parts to run, comma-separated: http, rpc, allocations.") var parts = "http,rpc,allocations"
    @Flag(help: "Print one JSON object instead of the tables.") var json = false
    @Option(help: "Also draw HTTP requests/s and RPC calls/s to this SVG file.") var svg: String?

    /// What `--json` prints: `{"http":[…],"rpc":[…],"allocations":[…]}`.
    struct Report: Encodable {
        var http: [HTTPBenchmark.Row] = []
        var rpc: [RPCBenchmark.Row] = []
        var allocations: [AllocationCount.Row] = []
    }

    func run() throws {
        Self.bootstrapLogging()
        let selected = Set(parts.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        guard !selected.isEmpty, selected.isSubset(of: ["http", "rpc", "allocations"]) else {
            throw ValidationError("--parts: a comma-separated subset of http, rpc, allocations")
        }
        guard let connectionCounts = Self.numbers(connections, maximum: 100_000), let payloadSizes = Self.numbers(payloads, maximum: 4 << 20),
            let callerCounts = Self.numbers(callers, maximum: 10_000)
        else {
            throw ValidationError("--connections (1 to 100000), --payloads (1 to 4194304 bytes), --callers (1 to 10000): comma-separated numbers")
        }
        guard (1...60).contains(duration), (1...60).contains(rpcDuration) else { throw ValidationError("--duration, --rpc-duration: 1 to 60 seconds") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads: 1 to 64") }
        guard (1...9).contains(repetitions) else { throw ValidationError("--repeat: from 1 to 9") }

        let binaries = URL(fileURLWithPath: Executable.current).deletingLastPathComponent()
        ChildProcesses.killOnInterrupt()
        let quiet = json
        let progress: (String) -> Void = { line in if !quiet { FileHandle.standardError.write(Data(("  " + line + "\n").utf8)) } }
        var report = Report()
        if selected.contains("http") {
            var http = HTTPBenchmark(binaries: binaries)
            http.connections = connectionCounts
            http.seconds = duration
            http.serverThreads = threads
            http.repeats = repetitions
            http.pinLoops = pinLoops
            report.http = try http.run(progress: progress)
        }
        if selected.contains("rpc") {
            var rpc = RPCBenchmark(binaries: binaries)
            rpc.payloadSizes = payloadSizes
            rpc.callers = callerCounts
            rpc.seconds = rpcDuration
            rpc.serverThreads = threads
            rpc.repeats = repetitions
            report.rpc = try rpc.run(progress: progress)
        }
        if selected.contains("allocations") {
            var count = AllocationCount(binaries: binaries)
            count.serverThreads = threads
            report.allocations = try count.run(progress: progress)
        }

        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.render(report, threads: threads, repetitions: repetitions, pinned: pinLoops))
        }
        if let svg {
            try Self.chart(report).write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    /// Comma-separated counts from 1 to `maximum`; nil when any item is empty or out of range.
    static func numbers(_ text: String, maximum: Int) -> [Int]? {
        let values = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ (1...maximum).contains($0 ?? 0) }) else { return nil }
        return values.compactMap { $0 }
    }

    static func render(_ report: Report, threads: Int, repetitions: Int, pinned: Bool) -> String {
        var sections: [String] = []
        let medianNote = repetitions > 1 ? ", median of \(repetitions) runs" : ""
        func f(_ value: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", value) }
        if !report.http.isEmpty {
            var rows = [["conns", "StraitNet req/s", "SwiftNIO req/s", "ratio", "p50 ms S/N", "p99 ms S/N", "p99 ratio", "peak RSS MiB S/N"]]
            for row in report.http {
                let s = row.straitnet, n = row.swiftnio
                rows.append([
                    String(row.connections), f(s.requestsPerSecond, 0), f(n.requestsPerSecond, 0), ratio(s.requestsPerSecond, n.requestsPerSecond),
                    "\(f(s.p50Milliseconds)) / \(f(n.p50Milliseconds))", "\(f(s.p99Milliseconds)) / \(f(n.p99Milliseconds))",
                    ratio(s.p99Milliseconds, n.p99Milliseconds), "\(f(Double(s.peakRSSKiB) / 1024, 1)) / \(f(Double(n.peakRSSKiB) / 1024, 1))",
                ])
            }
            let placement = pinned ? ", loops pinned one per CPU" : ", loops unpinned"
            sections.append("HTTP/1.1 plaintext, wrk -t1 --latency, \(threads) server threads each\(placement)\(medianNote):\n\n" + table(rows))
        }
        if !report.rpc.isEmpty {
            var rows = [["payload", "callers", "StraitNet calls/s", "SwiftNIO calls/s", "ratio", "p50 ms S/N", "p99 ms S/N", "p99 ratio"]]
            for row in report.rpc {
                let s = row.straitnet, n = row.swiftnio
                rows.append([
                    formatBytes(row.payloadBytes), String(row.callers), f(s.qps, 0), f(n.qps, 0), ratio(s.qps, n.qps),
                    "\(f(s.p50Microseconds / 1000, 3)) / \(f(n.p50Microseconds / 1000, 3))", "\(f(s.p99Microseconds / 1000, 3)) / \(f(n.p99Microseconds / 1000, 3))",
                    ratio(s.p99Microseconds, n.p99Microseconds),
                ])
            }
            var text = "Echo RPC over one multiplexed connection (StraitNet MuxClient / SwiftNIO client), closed-loop callers\(medianNote):\n\n" + table(rows)
            let errors = report.rpc.reduce(0) { $0 + $1.straitnet.errors + $1.swiftnio.errors }
            if errors > 0 { text += "\n\n\(errors) calls failed or came back wrong" }
            sections.append(text)
        }
        if !report.allocations.isEmpty {
            var rows = [["path", "StraitNet allocs/request", "SwiftNIO allocs/request", "StraitNet allocs / requests", "SwiftNIO allocs / requests"]]
            for row in report.allocations {
                rows.append([
                    row.path, f(row.straitnet.perRequest, 3), f(row.swiftnio.perRequest, 3),
                    "\(row.straitnet.allocations) / \(row.straitnet.requests)", "\(row.swiftnio.allocations) / \(row.swiftnio.requests)",
                ])
            }
            sections.append("Heap allocations in the server process once warm (malloc-interposer, every thread):\n\n" + table(rows))
        }
        return sections.joined(separator: "\n\n")
    }

    /// HTTP requests/s by connection count above RPC calls/s by caller count, in one SVG.
    static func chart(_ report: Report) -> String {
        var charts: [String] = []
        if !report.http.isEmpty {
            var chart = SVGChart(title: "HTTP/1.1 plaintext under wrk", yLabel: "thousand requests/s", series: [
                SVGChart.Series(name: "StraitNet", color: "#1f77b4", points: report.http.map { ($0.connections, $0.straitnet.requestsPerSecond / 1000) }),
                SVGChart.Series(name: "SwiftNIO", color: "#888888", points: report.http.map { ($0.connections, $0.swiftnio.requestsPerSecond / 1000) }),
            ])
            chart.xLabel = "connections"
            chart.xTick = { String($0) }
            charts.append(chart.render())
        }
        if !report.rpc.isEmpty {
            let palette = [("#1f77b4", "#888888"), ("#2ca02c", "#d62728"), ("#9467bd", "#8c564b")]
            var series: [SVGChart.Series] = []
            for (index, payload) in Set(report.rpc.map(\.payloadBytes)).sorted().enumerated() {
                let rows = report.rpc.filter { $0.payloadBytes == payload }
                let colors = palette[index % palette.count]
                series.append(SVGChart.Series(name: "StraitNet \(formatBytes(payload))", color: colors.0, points: rows.map { ($0.callers, $0.straitnet.qps / 1000) }))
                series.append(SVGChart.Series(name: "SwiftNIO \(formatBytes(payload))", color: colors.1, points: rows.map { ($0.callers, $0.swiftnio.qps / 1000) }))
            }
            var chart = SVGChart(title: "Echo RPC over one multiplexed connection", yLabel: "thousand calls/s", series: series)
            chart.xLabel = "concurrent callers"
            chart.xTick = { String($0) }
            charts.append(chart.render())
        }
        let height = 420 * charts.count
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"\(height)\">\n"
        for (index, chart) in charts.enumerated() {
            svg += "<g transform=\"translate(0,\(420 * index))\">\n\(chart)</g>\n"
        }
        return svg + "</svg>\n"
    }
}
