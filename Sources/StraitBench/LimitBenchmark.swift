import Foundation
import StraitBenchSupport
import StraitLimit
import StraitSystem

/// `strait bench limit`: the rate achieved against the rate set, over a veth between two namespaces
/// it makes, for each way of limiting, with a second, unlimited connection's ping-pong latency
/// measured while the limited traffic runs:
/// - Strait per connection: one iperf3 connection from a cgroup, paced by sock_ops (`SO_MAX_PACING_RATE`);
/// - Strait aggregate: `connections` iperf3 connections to one client address sharing one EDT rate under fq;
/// - tc tbf: the same connections through a token bucket at the veth's root.
///
/// The ping-pong (sockperf, not limited by any rule) goes to a second address of the receiver,
/// through the same interface. Its baseline is the same ping-pong with nothing else running.
/// Everything it made (namespaces, cgroup, pins, qdiscs) is removed at the end, also on failure.
public struct LimitBenchmark: Sendable {
    /// The rates set, each measured for every method.
    public var rates: [LimitRate] = [10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000].map { LimitRate(bitsPerSecond: $0) }
    /// Length of each iperf3 run.
    public var seconds = 3.0
    /// Connections of the aggregate and tbf runs (per-connection runs use one).
    public var connections = 4
    /// Interleaved rounds; the report keeps the median of each measurement.
    public var rounds = 3
    /// Called with a line after each measurement.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults: 10 Mbit/s to 10 Gbit/s, 3 s runs, four connections, three rounds.
    public init() {}

    /// A way of limiting.
    public enum Method: String, Codable, CaseIterable, Sendable {
        case straitConnection = "strait per connection"
        case straitAggregate = "strait aggregate (EDT, fq)"
        case tbf = "tc tbf"
    }

    /// One method at one rate (medians over the rounds).
    public struct Row: Codable, Sendable {
        /// The way of limiting.
        public var method: Method
        /// The rate set, in Mbit/s (10^6 bits per second).
        public var setMbps: Double
        /// The rate iperf3's receiver saw, summed over the connections, in Mbit/s.
        public var achievedMbps: Double
        /// iperf3 connections in the run.
        public var connections: Int
        /// Ping-pong of the unlimited connection while this one ran.
        public var pingP50Us: Double
        /// 99th-percentile round trip of that ping-pong, in microseconds.
        public var pingP99Us: Double
        /// Achieved over set rate: 1.0 is exact, below 1 under-delivers.
        public var achievedOverSet: Double { setMbps > 0 ? achievedMbps / setMbps : 0 }
    }

    /// What `strait bench limit` prints (as a table or JSON).
    public struct Report: Codable, Sendable {
        /// Length of each iperf3 run, in seconds.
        public var seconds: Double
        /// Rounds each median is taken over.
        public var rounds: Int
        /// What the veth carries with no limit (the ceiling for every method).
        public var unlimitedMbps: Double
        /// The ping-pong with nothing else running: the reference for `pingP50Us`.
        public var idlePingP50Us: Double
        /// 99th percentile of that idle ping-pong, in microseconds.
        public var idlePingP99Us: Double
        /// The ping-pong beside the same bulk transfer with no limit at all (the CPU the transfer costs shows here too).
        public var unlimitedPingP50Us: Double
        /// One row per rate and method that could run.
        public var rows: [Row]
        /// Methods this machine cannot run (e.g. no fq qdisc in the kernel), with the reason.
        public var unavailable: [String: String]
    }

    let runner = ProcessRunner()

    /// Makes the namespaces, cgroup and pins, runs every round, and removes everything again.
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        let name = "strait-bench-\(getpid())-limit"
        let pair = try VethPair.create(name: name, interface: "sblim\(getpid() % 10000)", subnet: 77)
        defer { pair.delete() }
        let pingAddress = "198.18.77.3"
        try NetworkNamespace.runIP(["-n", pair.receiver.name, "addr", "add", pingAddress + "/24", "dev", pair.receiverInterface])
        let cgroup = try Cgroup.root().makeChild(named: name)
        defer {
            let home = try? Cgroup.root()
            for pid in cgroup.processes() { try? home?.add(process: pid) }
            try? cgroup.remove()
        }
        let pins = "/sys/fs/bpf/" + name
        defer { try? pair.sender.run { try Limiter.removeAll(pinDirectory: pins) } }
        let cgroupID = try Limiter.cgroupID(path: cgroup.path)

        let (bulkPort, pingPort): (UInt16, UInt16) = (5201, 11111)
        let bulkServer = try runner.start(inNamespace(pair.receiver, ["iperf3", "-s", "-p", "\(bulkPort)", "-B", pair.receiverIPv4]))
        defer { bulkServer.stop() }
        let pingServer = try runner.start(inNamespace(pair.receiver, ["sockperf", "sr", "--tcp", "-i", pingAddress, "-p", "\(pingPort)"]))
        defer { pingServer.stop() }
        Thread.sleep(forTimeInterval: 0.5)

        // Rounds interleave every method and rate (and the references), and the report keeps the medians.
        var idle: [Sockperf.Latency] = [], unlimited: [Double] = [], busy: [Double] = []
        var samples: [Int: [Row]] = [:]
        var unavailable: [String: String] = [:]
        for round in 1...rounds {
            idle.append(try ping(pair, address: pingAddress, port: pingPort))
            let (throughput, beside) = try measuredTogether(
                { try bulk(pair, port: bulkPort, streams: connections, launcher: .plain) },
                { try ping(pair, address: pingAddress, port: pingPort) })
            unlimited.append(throughput)
            busy.append(beside.p50Microseconds)
            progress(String(format: "round %d: no limit %.0f Mbit/s over %d connections, ping-pong p50 %.1f µs beside it; idle ping-pong p50 %.1f µs", round, throughput, connections, beside.p50Microseconds, idle.last!.p50Microseconds))
            for (rateIndex, rate) in rates.enumerated() {
                for (methodIndex, method) in Method.allCases.enumerated() where unavailable[method.rawValue] == nil {
                    if shouldStop() { throw BenchError.interrupted }
                    let streams = method == .straitConnection ? 1 : connections
                    let launcher = method == .straitConnection ? Launcher(cgroupPath: cgroup.path) : .plain
                    let undo: () throws -> Void
                    do {
                        undo = try apply(method, rate: rate, pair: pair, pins: pins, cgroupID: cgroupID, port: bulkPort)
                    } catch LimitError.fairQueueUnavailable {
                        unavailable[method.rawValue] = "\(LimitError.fairQueueUnavailable)"
                        progress("\(method.rawValue): not measured: \(LimitError.fairQueueUnavailable)")
                        continue
                    }
                    defer { try? undo() }
                    let (achieved, latency) = try measuredTogether(
                        { try bulk(pair, port: bulkPort, streams: streams, launcher: launcher) },
                        { try ping(pair, address: pingAddress, port: pingPort) })
                    let row = Row(method: method, setMbps: Double(rate.bitsPerSecond) / 1e6, achievedMbps: achieved, connections: streams,
                                  pingP50Us: latency.p50Microseconds, pingP99Us: latency.p99Microseconds)
                    progress(String(format: "%@ at %@: %.1f Mbit/s (%.3f of set), ping-pong p50 %.1f µs", method.rawValue, rate.description, achieved, row.achievedOverSet, row.pingP50Us))
                    samples[rateIndex * Method.allCases.count + methodIndex, default: []].append(row)
                }
            }
        }
        let rows = samples.keys.sorted().compactMap { key -> Row? in
            guard var row = samples[key]?.first, let runs = samples[key] else { return nil }
            row.achievedMbps = median(runs.map(\.achievedMbps))
            row.pingP50Us = median(runs.map(\.pingP50Us))
            row.pingP99Us = median(runs.map(\.pingP99Us))
            return row
        }
        return Report(seconds: seconds, rounds: rounds, unlimitedMbps: median(unlimited), idlePingP50Us: median(idle.map(\.p50Microseconds)),
                      idlePingP99Us: median(idle.map(\.p99Microseconds)), unlimitedPingP50Us: median(busy), rows: rows, unavailable: unavailable)
    }

    /// Puts `method`'s limit in place; returns what takes it away again.
    /// Strait's limits load their pins afresh each time: removing the last rule removes them.
    func apply(_ method: Method, rate: LimitRate, pair: VethPair, pins: String, cgroupID: UInt64, port: UInt16) throws -> () throws -> Void {
        let interface = pair.senderInterface
        let limiter = { try Limiter.open(pinDirectory: pins, create: true) }
        switch method {
        case .straitConnection:
            let selector = try LimitSelector.connection(cgroupID: cgroupID, remotePort: port)
            let opened = try limiter()
            try opened.set(selector, rate: rate)
            return { try opened.remove(selector, grace: 0) }
        case .straitAggregate:
            let selector = try LimitSelector.aggregate(interface: interface, remote: IPPrefix(pair.receiverIPv4 + "/32"))
            let opened = try limiter()
            try pair.sender.run { _ = try opened.set(selector, rate: rate) }
            return { try pair.sender.run { _ = try opened.remove(selector) } }
        case .tbf:
            // The bucket holds at least 10 ms at the rate (more than one timer tick at any HZ) and 64 KiB (one TSO segment).
            let burst = max(rate.bytesPerSecond / 100, 65_536)
            _ = try runner.run(["tc", "-n", pair.sender.name, "qdisc", "replace", "dev", interface, "root", "tbf",
                                "rate", "\(rate.bitsPerSecond)bit", "burst", "\(burst)", "latency", "50ms"], timeout: 10)
            return { _ = try runner.run(["tc", "-n", pair.sender.name, "qdisc", "del", "dev", interface, "root"], timeout: 10) }
        }
    }

    func inNamespace(_ namespace: NetworkNamespace, _ command: [String]) -> [String] { ["ip", "netns", "exec", namespace.name] + command }

    /// Mbit/s received by the iperf3 server over `seconds`, from `streams` connections.
    func bulk(_ pair: VethPair, port: UInt16, streams: Int, launcher: Launcher) throws -> Double {
        let output = try runner.run(
            launcher.command(inNamespace(pair.sender, ["iperf3", "-c", pair.receiverIPv4, "-p", "\(port)", "-t", String(Int(seconds.rounded())), "-P", "\(streams)", "-J"])),
            timeout: seconds + 20)
        return try Iperf3.receivedGbits(fromJSON: output) * 1000
    }

    /// sockperf TCP ping-pong of 64 B messages for `seconds`, from the sender namespace.
    func ping(_ pair: VethPair, address: String, port: UInt16) throws -> Sockperf.Latency {
        let output = try runner.run(
            inNamespace(pair.sender, ["sockperf", "pp", "--tcp", "-i", address, "-p", "\(port)", "-t", String(Int(max(1, seconds - 1))), "-m", "64"]),
            timeout: seconds + 20)
        return try Sockperf.parse(output)
    }

    /// Runs the bulk transfer and, starting half a second into it, the ping-pong.
    func measuredTogether(_ bulk: @escaping @Sendable () throws -> Double, _ ping: @escaping @Sendable () throws -> Sockperf.Latency) throws -> (Double, Sockperf.Latency) {
        nonisolated(unsafe) var latency: Result<Sockperf.Latency, Error>?
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 0.5)
            latency = Result { try ping() }
            done.signal()
        }
        let achieved = Result { try bulk() }
        done.wait()
        return (try achieved.get(), try latency!.get())
    }
}

/// The chart `strait bench limit --svg` writes: achieved ÷ set rate (log x axis of the set rate).
public struct LimitBenchmarkChart {
    /// The measurement drawn.
    public var report: LimitBenchmark.Report

    /// A chart of `report`.
    public init(report: LimitBenchmark.Report) { self.report = report }

    /// The SVG document.
    public func render() -> String {
        let colors: [LimitBenchmark.Method: String] = [.straitConnection: "#1f77b4", .straitAggregate: "#2ca02c", .tbf: "#888888"]
        var chart = SVGChart(
            title: "Achieved rate as % of the set rate (veth between namespaces)", yLabel: "achieved / set (%)",
            series: LimitBenchmark.Method.allCases.map { method in
                SVGChart.Series(name: method.rawValue, color: colors[method] ?? "#000",
                                points: report.rows.filter { $0.method == method }.map { (x: Int($0.setMbps), y: $0.achievedOverSet * 100) })
            }.filter { !$0.points.isEmpty },  // methods this machine could not run
            reference: ("100% of the set rate", 100))
        chart.xLabel = "set rate (Mbit/s)"
        chart.xTick = { $0 >= 1000 ? "\($0 / 1000) Gbit/s" : "\($0) Mbit/s" }
        return chart.render()
    }
}
