import ArgumentParser
import Foundation
import StraitBench
import StraitCLI
import StraitSystem

struct BenchSteer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "steer",
        abstract: "SO_REUSEPORT steering: balance, remap on leave, restarts under load, UDP cost per policy, in a private namespace."
    )

    @Option(help: "Connections (TCP) and sessions (UDP payload) for the balance part.") var connections = 10_000
    @Option(help: "Restarts per restart mode.") var restarts = 20
    @Option(help: "Client connections per second during the restarts.") var rate = 2000
    @Option(help: "Seconds per UDP throughput sample.") var udpSeconds: Double = 1
    @Option(name: .customLong("repeat"), help: "UDP samples per policy, alternating policies; the median is reported.") var repetitions = 3
    @Option(help: "Microseconds of CPU work per request on the restarted server (0: idle server).") var serverWork = 600
    @Option(help: "Parts to run, comma-separated: balance,remap,restart,udp.") var parts = "balance,remap,restart,udp"
    @Flag(help: "Print one JSON object instead of the tables.") var json = false
    @Option(help: "Also draw UDP throughput and restart failures to this SVG file.") var svg: String?

    func run() throws {
        Self.bootstrapLogging()
        guard (100...50_000).contains(connections) else { throw ValidationError("--connections: from 100 to 50000") }
        guard (1...50).contains(restarts) else { throw ValidationError("--restarts: from 1 to 50") }
        guard (100...5000).contains(rate) else { throw ValidationError("--rate: from 100 to 5000 connections/s") }
        guard udpSeconds > 0, udpSeconds <= 5 else { throw ValidationError("--udp-seconds: up to 5") }
        guard (1...9).contains(repetitions) else { throw ValidationError("--repeat: from 1 to 9") }
        guard geteuid() == 0 else { throw CommandFailure("strait bench steer creates a network namespace and loads BPF programs: run it as root (sudo)") }
        let chosen = parts.split(separator: ",").map { SteerBenchmark.Part(rawValue: String($0)) }
        guard !chosen.isEmpty, chosen.allSatisfy({ $0 != nil }) else { throw ValidationError("--parts: any of balance,remap,restart,udp") }
        guard (0...5000).contains(serverWork) else { throw ValidationError("--server-work: from 0 to 5000 µs") }
        var benchmark = SteerBenchmark()
        benchmark.parts = Set(chosen.compactMap { $0 })
        benchmark.serverWorkMicroseconds = serverWork
        benchmark.balanceConnections = connections
        benchmark.restarts = restarts
        benchmark.restartRate = rate
        benchmark.udpSeconds = udpSeconds
        benchmark.udpRepeats = repetitions
        let report = try runBenchmark(json: json, render: Self.render) { progress, shouldStop in
            benchmark.progress = progress
            return try benchmark.run(shouldStop: shouldStop)
        }
        if let svg {
            try report.svg().write(toFile: svg, atomically: true, encoding: .utf8)
            if !json { print("\nchart written to \(svg)") }
        }
    }

    static func render(_ report: SteerBenchmark.Report) -> String {
        var sections = ["SO_REUSEPORT steering, kernel \(report.kernel), in a private network namespace."]
        if !report.balance.isEmpty {
            sections.append("Balance over 4 members (max/min; 1.00 is perfect):\n\n" + table([["policy", "transport", "per member", "max/min"]] + report.balance.map {
                [$0.policy, $0.transport, $0.perMember.map(String.init).joined(separator: " / "), $0.maxOverMin.map { String(format: "%.2f", $0) } ?? "one got none"]
            }))
        }
        if !report.remap.isEmpty {
            sections.append("Keys that change member when one of 8 leaves (ideal 1/8 = 0.125):\n\n" + table([["policy", "clients", "moved", "fraction"]] + report.remap.map {
                [$0.policy, "\($0.clients)", "\($0.moved)", String(format: "%.3f", $0.fraction)]
            }))
        }
        if let first = report.restart.first {
            sections.append(
                "Restarts under load (short connections, \(first.workMicroseconds) µs of work per request; failures must be 0 for Strait):\n\n"
                    + table([["mode", "restarts", "connections", "failed connects", "resets", "migrated by program"]] + report.restart.map {
                        [$0.mode.rawValue, "\($0.restarts)", "\($0.attempted)", "\($0.failedConnects)", "\($0.resets)", "\($0.migrated)"]
                    } + (report.restartAcrossProcesses.map { [[
                        "strait, real processes (idle server)", "\($0.restarts)", "\($0.attempted)", "\($0.failedConnects)", "\($0.resets)", "-",
                    ]] } ?? [])))
        }
        if !report.udp.isEmpty {
            sections.append(
                "UDP through a 4-socket group (recvmmsg on 2 loops, one sendmmsg sender from 256 flows, 64 B):\n\n"
                    + table([["policy", "received/s (median)", "lowest-highest sample", "vs kernel", "sender path/s", "vs kernel"]] + report.udp.map {
                        [$0.policy, String(format: "%.0f", $0.datagramsPerSecond), String(format: "%.0f-%.0f", $0.lowest, $0.highest),
                         String(format: "%+.1f%%", ($0.relative - 1) * 100), String(format: "%.0f", $0.senderPathPerSecond),
                         String(format: "%+.1f%%", ($0.senderPathRelative - 1) * 100)]
                    }))
        }
        return sections.joined(separator: "\n\n")
    }
}
