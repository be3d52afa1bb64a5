import Foundation
import Logging
import StraitBenchSupport
import StraitNet
import StraitProxy
import StraitSystem

/// `strait bench proxy`: the same iperf3 and sockperf traffic, in one run, directly, through
/// HAProxy in TCP mode (a child process with a generated config on loopback ports), and through
/// Strait's proxy on each datapath and on `auto`. Strait runs inside this process with two loops,
/// HAProxy with two threads, so both get the same two cores.
///
/// iperf3 and sockperf (client and server) run in a private cgroup on every path, which Strait's
/// `skmsg` and `auto` runs name as their endpoints cgroup; the cgroup is removed at the end.
///
/// With a ``baseline`` (another build of `strait`, such as the previous commit built into a scratch
/// folder), every datapath is measured on two child processes instead, this tree's `strait` (the
/// one beside `strait-bench`) and the baseline, started alike and interleaved in the same rounds:
/// the no-regression check of a change, in one run on one machine.
public struct ProxyBenchmark: Sendable {
    /// Bytes per write of the iperf3 throughput runs, one row per size.
    public var messageSizes: [Int] = [1024, 16_384, 131_072]
    /// Length of each iperf3 and sockperf run, in seconds.
    public var seconds: Double = 3
    /// Bytes per message of the sockperf ping-pong.
    public var latencyMessageBytes = 64
    /// Strait's datapaths measured; sockmap, skmsg and auto are left out when the SK_SKB programs
    /// do not load here.
    public var datapaths: [Datapath] = [.copy, .splice, .sockmap, .skmsg, .auto]
    /// Rounds; each round measures every path once (in a rotated order), and the median is reported.
    public var repeats = 1
    /// Another `strait` executable to compare with, or nil (Strait then runs inside this process).
    public var baseline: String?
    /// Called with a line of text after each run; called on the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: 1 KiB, 16 KiB and 128 KiB writes, 3 s runs, every datapath, one round.
    public init() {}

    /// Encodes (snake_case) as `{"throughput":[{"message_bytes":N,"direct_gbit_s":A,"haproxy_gbit_s":B,
    /// "strait_gbit_s":{"copy":…}}],"latency":{"direct_p50_us":…,"haproxy_p50_us":…,"strait_p50_us":{…}}}`.
    public struct Report: Sendable, Codable {
        /// One row per message size.
        public var throughput: [Row]
        /// Ping-pong with the scheduler free to place every process (the measurement).
        public var latency: Latency
        /// The same with every process on one CPU, so no round trip waits for a cross-CPU wake-up.
        public var latencyOneCpu: Latency
        /// Why the sockmap datapath could not run (its columns are then missing), or nil.
        public var sockmapUnavailable: String?

        /// One message size: the receiver's Gbit/s per path, medians over the rounds.
        public struct Row: Sendable, Codable {
            /// Bytes per write.
            public var messageBytes: Int
            /// Client straight to the server (the bound).
            public var directGbitS: Double
            /// Through HAProxy in TCP mode.
            public var haproxyGbitS: Double
            /// Through Strait's proxy, keyed by datapath name (`copy`, `splice`, …).
            public var straitGbitS: [String: Double]
            /// Through the ``ProxyBenchmark/baseline`` build, keyed like ``straitGbitS``; empty
            /// without one.
            public var baselineGbitS: [String: Double] = [:]
        }

        /// sockperf ping-pong round trips per path, medians over the rounds, in microseconds.
        public struct Latency: Sendable, Codable {
            /// Bytes per message.
            public var messageBytes: Int
            /// Median, client straight to the server.
            public var directP50Us: Double
            /// Median, through HAProxy.
            public var haproxyP50Us: Double
            /// Median through Strait's proxy, keyed by datapath name.
            public var straitP50Us: [String: Double]
            /// 99th percentile, client straight to the server.
            public var directP99Us: Double
            /// 99th percentile, through HAProxy.
            public var haproxyP99Us: Double
            /// 99th percentile through Strait's proxy, keyed by datapath name.
            public var straitP99Us: [String: Double]
            /// Median through the ``ProxyBenchmark/baseline`` build, keyed by datapath; empty without one.
            public var baselineP50Us: [String: Double] = [:]
            /// 99th percentile through the baseline build, keyed by datapath; empty without one.
            public var baselineP99Us: [String: Double] = [:]
        }
    }

    /// One way of reaching the server: directly, or through a proxy listening on a port of its own:
    /// HAProxy, Strait in this process, or a `strait` child process (``Build``).
    enum Path: Hashable {
        case direct, haproxy, strait(Datapath), process(Build, Datapath)
    }

    /// Which `strait` executable a child-process path runs.
    enum Build: Hashable {
        /// This tree's, beside `strait-bench`.
        case current
        /// ``ProxyBenchmark/baseline``.
        case baseline
    }

    /// Runs every path for every size, then the ping-pong twice (free and on one CPU), each
    /// `repeats` times: blocks for about (sizes + 2) × paths × ``repeats`` × ``seconds``, plus a
    /// proxy start per run.
    /// Makes a cgroup for the peers and removes it (killing what is left in it) on return, error or
    /// interrupt; each Strait proxy runs inside this process and is shut down after its run. Needs
    /// `haproxy` on PATH; throws ``BenchError/interrupted`` once `shouldStop` returns true (checked
    /// between runs).
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        _ = try ProcessRunner.locate("haproxy")
        var logger = Logger(label: "strait.bench.proxy")
        logger.logLevel = .error
        // Probe once whether the kernel datapath loads here.
        let probe = try? SockmapForwarder()
        let unavailable: String? = probe == nil ? "the SK_SKB programs did not load (needs root / CAP_BPF + CAP_NET_ADMIN)" : nil
        let straitPaths = datapaths.filter { unavailable == nil || ($0 != .sockmap && $0 != .auto && $0 != .skmsg) }
        let executables: [Build: String]
        if let baseline {
            guard FileManager.default.isExecutableFile(atPath: baseline) else {
                throw ToolFailure(command: [baseline], status: 127, output: "--baseline: \(baseline) is not an executable (build the other commit with `swift build -c release --product strait` in its own folder)")
            }
            executables = [.current: try ProcessRunner.locateStrait(), .baseline: baseline]
        } else {
            executables = [:]
        }
        let straitRuns: [Path] = baseline == nil
            ? straitPaths.map { .strait($0) }
            : straitPaths.flatMap { [Path.process(.current, $0), .process(.baseline, $0)] }
        let paths: [Path] = [.direct, .haproxy] + straitRuns
        let cgroup = try Cgroup.root().makeChild(named: "strait-bench-proxy-\(getpid())")
        defer {
            for pid in cgroup.processes() { kill(pid, SIGKILL) }
            for _ in 0..<50 where cgroup.exists {
                if (try? cgroup.remove()) != nil { break }
                usleep(20_000)
            }
        }
        let endpoints = Endpoints(cgroupPath: cgroup.path)

        var rows: [Report.Row] = []
        for size in messageSizes {
            var samples: [Path: [Double]] = [:]
            for round in 0..<repeats {
                // Rotate the order each round so slow drift on a shared machine touches every path alike.
                for index in paths.indices {
                    let path = paths[(index + round) % paths.count]
                    if shouldStop() { throw BenchError.interrupted }
                    let value = try through(path, endpoints: endpoints, executables: executables, logger: logger) { serverPort, clientPort in
                        try Iperf3().throughput(messageBytes: size, seconds: seconds, serverPort: serverPort, clientPort: clientPort, launcher: endpoints.launcher)
                    }
                    samples[path, default: []].append(value)
                    progress(String(format: "%@ %@: %.2f Gbit/s", formatBytes(size), name(path), value))
                }
            }
            var row = Report.Row(messageBytes: size, directGbitS: median(samples[.direct] ?? []), haproxyGbitS: median(samples[.haproxy] ?? []), straitGbitS: [:])
            for path in paths {
                switch path {
                case .strait(let datapath), .process(.current, let datapath): row.straitGbitS[datapath.rawValue] = median(samples[path] ?? [])
                case .process(.baseline, let datapath): row.baselineGbitS[datapath.rawValue] = median(samples[path] ?? [])
                case .direct, .haproxy: break
                }
            }
            rows.append(row)
        }

        let latency = try pingPong(paths, endpoints: endpoints, executables: executables, logger: logger, label: "", shouldStop: shouldStop)
        // The same again with this process and every child on one CPU: the datapath without the
        // cross-CPU wake-ups that dominate round trips on a small VM.
        let oneCPU = try onCPU0 { try pingPong(paths, endpoints: endpoints, executables: executables, logger: logger, label: " (one CPU)", shouldStop: shouldStop) }
        return Report(throughput: rows, latency: latency, latencyOneCpu: oneCPU, sockmapUnavailable: unavailable)
    }

    /// sockperf ping-pong over every path, `repeats` rounds in rotated order; medians.
    private func pingPong(_ paths: [Path], endpoints: Endpoints, executables: [Build: String], logger: Logger, label: String, shouldStop: () -> Bool) throws -> Report.Latency {
        var p50: [Path: [Double]] = [:]
        var p99: [Path: [Double]] = [:]
        for round in 0..<repeats {
            for index in paths.indices {
                let path = paths[(index + round) % paths.count]
                if shouldStop() { throw BenchError.interrupted }
                let value = try through(path, endpoints: endpoints, executables: executables, logger: logger) { serverPort, clientPort in
                    try Sockperf().pingPong(messageBytes: latencyMessageBytes, seconds: seconds, serverPort: serverPort, clientPort: clientPort, launcher: endpoints.launcher)
                }
                p50[path, default: []].append(value.p50Microseconds)
                p99[path, default: []].append(value.p99Microseconds)
                progress(String(format: "ping-pong %d B%@ %@: p50 %.1f µs, p99 %.1f µs", latencyMessageBytes, label, name(path), value.p50Microseconds, value.p99Microseconds))
            }
        }
        var latency = Report.Latency(
            messageBytes: latencyMessageBytes, directP50Us: median(p50[.direct] ?? []), haproxyP50Us: median(p50[.haproxy] ?? []), straitP50Us: [:],
            directP99Us: median(p99[.direct] ?? []), haproxyP99Us: median(p99[.haproxy] ?? []), straitP99Us: [:])
        for path in paths {
            switch path {
            case .strait(let datapath), .process(.current, let datapath):
                latency.straitP50Us[datapath.rawValue] = median(p50[path] ?? [])
                latency.straitP99Us[datapath.rawValue] = median(p99[path] ?? [])
            case .process(.baseline, let datapath):
                latency.baselineP50Us[datapath.rawValue] = median(p50[path] ?? [])
                latency.baselineP99Us[datapath.rawValue] = median(p99[path] ?? [])
            case .direct, .haproxy: break
            }
        }
        return latency
    }

    private func name(_ path: Path) -> String {
        switch path {
        case .direct: "direct"
        case .haproxy: "haproxy"
        case .strait(let datapath), .process(.current, let datapath): "strait \(datapath)"
        case .process(.baseline, let datapath): "baseline \(datapath)"
        }
    }

    /// Runs `measure(serverPort, clientPort)` with the proxy of `path` in between (started before,
    /// stopped after). A failed run (a peer that lost a port race on a busy machine) is retried
    /// twice on fresh ports before the error is reported.
    private func through<T>(_ path: Path, endpoints: Endpoints, executables: [Build: String], logger: Logger, _ measure: (UInt16, UInt16) throws -> T) throws -> T {
        for attempt in 1...3 {
            do {
                return try once(path, endpoints: endpoints, executables: executables, logger: logger, measure)
            } catch {
                if attempt == 3 { throw error }
                progress("\(name(path)): \(error); retrying")
            }
        }
        preconditionFailure("unreachable")
    }

    private func once<T>(_ path: Path, endpoints: Endpoints, executables: [Build: String], logger: Logger, _ measure: (UInt16, UInt16) throws -> T) throws -> T {
        let serverPort = BenchPorts.free()
        switch path {
        case .direct:
            return try measure(serverPort, serverPort)
        case .haproxy:
            let proxyPort = BenchPorts.free()
            let haproxy = try HAProxy.start(listenPort: proxyPort, serverPort: serverPort)
            defer { haproxy.stop() }
            return try measure(serverPort, proxyPort)
        case .strait(let datapath):
            let upstream = SocketAddress.ip(IPAddress("127.0.0.1")!, port: serverPort)
            var config = ProxyConfig.quickStart(listen: .ip(IPAddress("127.0.0.1")!, port: 0), upstreams: [upstream], datapath: datapath)
            config.clusters[0].healthCheck = nil
            config.accessLog = false
            if datapath == .skmsg || datapath == .auto { config.endpointsCgroup = endpoints.cgroupPath }
            let proxy = try Proxy(config: config, loopCount: 2, logger: logger)
            defer {
                let done = DispatchSemaphore(value: 0)
                Task {
                    await proxy.shutdown(drainTimeout: .zero)
                    done.signal()
                }
                done.wait()
            }
            return try measure(serverPort, proxy.listenerAddresses.values.first!.port!)
        case .process(let build, let datapath):
            // The quick-start flags, which every build since the proxy's first has: two loops by
            // default, no health checks, errors only (no access lines), and a hand-over socket of
            // its own so that a proxy already running on this machine is never touched.
            let proxyPort = BenchPorts.free()
            let handover = NSTemporaryDirectory() + "strait-bench-proxy-\(getpid())-\(proxyPort).handover"
            defer { try? FileManager.default.removeItem(atPath: handover) }
            var command = [executables[build]!, "proxy", "--listen", "127.0.0.1:\(proxyPort)", "--upstream", "127.0.0.1:\(serverPort)",
                           "--datapath", datapath.rawValue, "--log-level", "error", "--handover-socket", handover]
            if datapath == .skmsg || datapath == .auto { command += ["--endpoints-cgroup", endpoints.cgroupPath] }
            let proxy = try ProcessRunner().start(command)
            defer { proxy.stop() }
            try BenchPorts.waitForListener(port: proxyPort, timeout: 10)
            return try measure(serverPort, proxyPort)
        }
    }
}

/// Where the benchmark's clients and servers run: a private cgroup.
struct Endpoints {
    let cgroupPath: String
    var launcher: Launcher { Launcher(cgroupPath: cgroupPath) }
}

/// HAProxy in TCP mode as a child process: a generated config in a temporary file, two threads,
/// foreground (`-db`), killed when the measurement ends. Never a system service.
struct HAProxy {
    let running: ProcessRunner.Running
    let configPath: String

    static func start(listenPort: UInt16, serverPort: UInt16) throws -> HAProxy {
        let config = """
            global
                maxconn 4096
                nbthread 2
            defaults
                mode tcp
                timeout connect 5s
                timeout client 120s
                timeout server 120s
            listen strait_bench
                bind 127.0.0.1:\(listenPort)
                server upstream 127.0.0.1:\(serverPort)

            """
        let path = NSTemporaryDirectory() + "strait-bench-haproxy-\(getpid())-\(listenPort).cfg"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        let running = try ProcessRunner().start(["haproxy", "-db", "-f", path])
        try BenchPorts.waitForListener(port: listenPort, timeout: 5)
        return HAProxy(running: running, configPath: path)
    }

    func stop() {
        running.stop()
        try? FileManager.default.removeItem(atPath: configPath)
    }
}

extension Iperf3 {
    /// One client stream to `clientPort` (a proxy in front of the server, or the server itself)
    /// against a one-off server on `serverPort`. Returns the receiver's Gbit/s.
    public func throughput(messageBytes: Int, seconds: Double, serverPort: UInt16, clientPort: UInt16, launcher: Launcher) throws -> Double {
        let server = try runner.start(launcher.command(["iperf3", "-s", "-1", "-p", "\(serverPort)", "-B", "127.0.0.1"]))
        defer { server.stop() }
        try BenchPorts.waitForListener(port: serverPort, timeout: 5)
        let output = try runner.run(
            launcher.command(["iperf3", "-c", "127.0.0.1", "-p", "\(clientPort)", "-t", String(format: "%.1f", seconds), "-l", "\(messageBytes)", "-J"]),
            timeout: seconds + 15)
        return try Self.receivedGbits(fromJSON: output)
    }
}

extension Sockperf {
    /// Ping-pong through `clientPort` to a server on `serverPort`.
    public func pingPong(messageBytes: Int, seconds: Double, serverPort: UInt16, clientPort: UInt16, launcher: Launcher) throws -> Latency {
        let server = try runner.start(launcher.command(["sockperf", "sr", "--tcp", "-i", "127.0.0.1", "-p", "\(serverPort)"]))
        defer { server.stop() }
        try BenchPorts.waitForListener(port: serverPort, timeout: 5)
        let output = try runner.run(
            launcher.command(["sockperf", "pp", "--tcp", "-i", "127.0.0.1", "-p", "\(clientPort)", "-t", String(format: "%.0f", max(1, seconds)), "-m", "\(messageBytes)"]),
            timeout: seconds + 15)
        return try Self.parse(output)
    }
}
