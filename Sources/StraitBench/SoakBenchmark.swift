import Foundation
import Logging
import StraitBenchSupport
import StraitNet
import StraitProxy
import StraitSystem
import Synchronization

/// `strait bench soak`: a bounded soak of `strait proxy`. For `minutes`, worker threads run normal
/// and hostile clients (``Behavior``, StraitBenchSupport's `HostilePeers`) through one in-process
/// proxy with a listener per datapath (copy, splice, sockmap, auto, skmsg) in front of an echo
/// server, while the configuration is reloaded every few seconds and the proxy is restarted in
/// place now and then (a successor `Proxy` takes the same listening sockets, the old one drains:
/// what `strait proxy restart` does across processes, without the exec). It reports connections
/// served, bytes verified, errors by kind (what clients saw and what the proxy counted), and the
/// peaks of memory (RSS, MemAvailable, TCP's pages) and descriptors.
///
/// Clients and the echo server's listener run in a private cgroup (the endpoints cgroup of the
/// skmsg listener), removed at the end. Not for CI: it runs for minutes.
public struct SoakBenchmark: Sendable {
    /// How long the clients run, in minutes; ``run(shouldStop:)`` blocks that long plus the drain.
    public var minutes: Double = 1
    /// Client threads, each running one connection at a time, round-robin over the datapaths.
    public var workers = 8
    /// Seconds between reloads, and between restarts (0: none).
    public var reloadSeconds: Double = 5
    /// Seconds between in-place restarts of the proxy (0: none).
    public var restartSeconds: Double = 30
    /// Called with a status line now and then; called on the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: one minute, 8 workers, a reload every 5 s, a restart every 30 s.
    public init() {}

    /// What one client does.
    public enum Behavior: String, CaseIterable, Sendable, Codable {
        /// Sends a random 1 B–1 MiB, half-closes, verifies the whole echo.
        case normal
        /// Sends 512 KiB while reading the echo at 4 MiB/s.
        case slowReader = "slow_reader"
        /// Sends 5 bytes, one per 100 ms.
        case trickle
        /// Sends 128 KiB, then resets.
        case reset
        /// Sends 32 KiB, half-closes at once, verifies the echo.
        case halfCloseEarly = "half_close_early"
        /// Pushes without ever reading until the path stalls (at most 64 MiB), then resets.
        case neverReads = "never_reads"
        /// Opens 20 idle connections for a second.
        case idle
        /// Sends a 1 MiB request header to /metrics.
        case oversizedHeader = "oversized_header"
    }

    /// Encodes (snake_case) as `{"seconds":…,"connections":…,"bytes_verified":…,"client_errors":{…},
    /// "client_errors_by_datapath":{…},"proxy_errors":{…},"by_behavior":{…},"reloads":…,"restarts":…,"peak":{…},"baseline":{…},"end":{…}}`.
    public struct Report: Sendable, Codable {
        /// Wall time of the run, in seconds.
        public var seconds: Double
        /// Connections clients completed, over every behaviour.
        public var connections: Int
        /// Echoed bytes the clients checked against the pattern and found right.
        public var bytesVerified: Int
        /// Failures clients saw that are not the ones they caused: a byte wrong or missing, a
        /// timeout, an unexpected reset. Zero is the pass mark.
        public var clientErrors: [String: Int]
        /// The same failures by the listener's datapath, then `behaviour:kind` (`normal:bytes_missing`):
        /// which datapath and which kind of client each one came from.
        public var clientErrorsByDatapath: [String: [String: Int]]
        /// `strait_proxy_errors_total` by kind, summed over every proxy of the run.
        public var proxyErrors: [String: Int]
        /// Client runs by ``Behavior`` name.
        public var byBehavior: [String: Int]
        /// The most a never-reading client pushed before back-pressure stopped it.
        public var largestStalledPush: Int
        /// Configuration reloads done.
        public var reloads: Int
        /// In-place restarts done (a successor proxy took the listeners).
        public var restarts: Int
        /// Why the sockmap datapaths could not run, or nil.
        public var sockmapUnavailable: String?
        /// The sample taken before any client started.
        public var baseline: Resources
        /// The worst of every sample (one each 250 ms), field by field: the highest RSS,
        /// descriptors, TCP memory and connections, the lowest MemAvailable.
        public var peak: Resources
        /// The sample taken after every proxy and the echo server shut down: what leaked, if
        /// anything.
        public var end: Resources
    }

    /// One sample: this process's RSS and descriptors, the machine's MemAvailable (its fall from
    /// the baseline at the peak) and TCP's memory, the proxy's open connections.
    public struct Resources: Sendable, Codable {
        /// This process's resident set, MiB.
        public var residentMiB: Int
        /// This process's open descriptors.
        public var descriptors: Int
        /// The machine's MemAvailable, MiB.
        public var memoryAvailableMiB: Int
        /// TCP's memory on the machine (pages in /proc/net/sockstat times the page size), MiB.
        public var tcpMemoryMiB: Int
        /// Connections the current proxy holds open (0 once none runs).
        public var activeConnections: Int
    }

    static let datapaths: [Datapath] = [.copy, .splice, .sockmap, .auto, .skmsg]
    static let pattern = PatternStream(seed: 0x534F_414B)

    /// Thread-safe tallies.
    final class Tally: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var connections = 0
        private(set) var bytes = 0
        private(set) var errors: [String: Int] = [:]
        private(set) var errorsByDatapath: [String: [String: Int]] = [:]
        private(set) var behaviors: [String: Int] = [:]
        private(set) var largestPush = 0

        func served(_ behavior: Behavior, connections count: Int = 1, bytes verified: Int = 0) {
            lock.withLock {
                connections += count
                bytes += verified
                behaviors[behavior.rawValue, default: 0] += 1
            }
        }
        /// Counts a failure of `kind`; with `datapath`, also under that datapath and `behavior`.
        func error(_ kind: String, datapath: Datapath? = nil, behavior: Behavior? = nil) {
            lock.withLock {
                errors[kind, default: 0] += 1
                if let datapath { errorsByDatapath[datapath.rawValue, default: [:]]["\(behavior?.rawValue ?? "-"):\(kind)", default: 0] += 1 }
            }
        }
        func pushed(_ count: Int) { lock.withLock { largestPush = max(largestPush, count) } }
    }

    /// Runs the soak: blocks for ``minutes`` plus up to 5 s of drain. Raises this process's
    /// open-file limit to its hard limit, makes a test cgroup and pin folder, an echo server and a
    /// proxy on a two-loop StraitNet group, all removed on return, error or interrupt
    /// (``shouldStop`` is polled every 250 ms and ends the soak early with a report).
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        try ResourceLimits.raiseOpenFilesToHard()
        var logger = Logger(label: "strait.bench.soak")
        logger.logLevel = .error
        return try TestCgroup.with { cgroup in
            let group = try EventLoopGroup(loopCount: 2)
            defer { group.shutdown() }
            let echo = try cgroup.inside {
                try Server(address: .ip(IPAddress("127.0.0.1")!, port: 0), group: group, handlers: ConnectionHandlers(onRequest: { connection in
                    connection.writer.append(connection.reader)
                    connection.flush()
                }))
            }
            var config = ProxyConfig(
                listeners: Self.datapaths.map { ListenerConfig(name: $0.rawValue, address: .ip(IPAddress("127.0.0.1")!, port: 0), cluster: "echo", datapath: $0, idleTimeout: .seconds(30)) },
                clusters: [ClusterConfig(name: "echo", upstreams: [UpstreamConfig(address: echo.address)])])
            config.metricsAddress = .ip(IPAddress("127.0.0.1")!, port: 0)  // each proxy of the run picks its own
            config.endpointsCgroup = cgroup.cgroup.path
            config.accessLog = false
            let first = try Proxy(config: config, loopCount: 2, logger: logger)
            // Fixed from here on: a reload keeps each listener's socket, a restart hands it over.
            let addresses = first.listenerAddresses
            config.listeners = config.listeners.map { listener in
                var fixed = listener
                fixed.address = addresses[listener.name] ?? listener.address
                return fixed
            }
            let ports = Dictionary(uniqueKeysWithValues: Self.datapaths.map { ($0, addresses[$0.rawValue]!.port!) })
            // Each proxy of the run has its own metrics port (a restart does not hand it over).
            let metricsPort = Mutex(first.metricsAddress!.port!)

            let tally = Tally()
            let baseline = Self.sample(first)
            let peak = Mutex(baseline)
            let started = ContinuousClock.now
            let deadline = started + .milliseconds(Int(minutes * 60_000))
            let finished: @Sendable () -> Bool = { ContinuousClock.now >= deadline || shouldStop() }
            progress("soak: \(workers) workers for \(minutes) min, listeners \(ports.map { "\($0.key.rawValue):\($0.value)" }.sorted().joined(separator: " ")), endpoints cgroup \(cgroup.cgroup.path)")

            let proxies = Mutex<[Proxy]>([first])
            let current = Mutex(first)
            let threads = (0..<workers).map { index in
                Thread {
                    var random = SystemRandomNumberGenerator()
                    var turn = index
                    while !finished() {
                        let datapath = Self.datapaths[turn % Self.datapaths.count]
                        turn += 1
                        let behavior = Self.pick(&random)
                        Self.client(behavior, datapath: datapath, port: ports[datapath]!, metricsPort: metricsPort.withLock { $0 }, tracked: datapath == .skmsg ? cgroup : nil, tally: tally, random: &random)
                    }
                }
            }
            for thread in threads { thread.start() }

            var reloads = 0, restarts = 0
            let drains = DispatchGroup()
            var nextReload = started + .milliseconds(Int(reloadSeconds * 1000))
            var nextRestart = started + .milliseconds(Int(restartSeconds * 1000))
            var lastReport = started
            while !finished() {
                Thread.sleep(forTimeInterval: 0.25)
                let now = ContinuousClock.now
                let sample = Self.sample(current.withLock { $0 })
                peak.withLock { Self.raise(&$0, with: sample) }
                if reloadSeconds > 0, now >= nextReload {
                    nextReload = now + .milliseconds(Int(reloadSeconds * 1000))
                    // Alternate the idle timeout, so every reload really changes the settings.
                    for index in config.listeners.indices { config.listeners[index].idleTimeout = .seconds(reloads % 2 == 0 ? 31 : 30) }
                    do { try current.withLock { $0 }.reload(config); reloads += 1 } catch { tally.error("reload_failed") }
                }
                if restartSeconds > 0, now >= nextRestart {
                    nextRestart = now + .milliseconds(Int(restartSeconds * 1000))
                    let old = current.withLock { $0 }
                    do {
                        // Duplicates the successor owns (and closes, if it fails to start).
                        let successor = try Proxy(
                            config: config, loopCount: 2, inheriting: InheritedSockets(duplicating: old.listenerSockets), logger: logger)
                        old.stopAccepting()
                        current.withLock { $0 = successor }
                        metricsPort.withLock { $0 = successor.metricsAddress!.port! }
                        proxies.withLock { $0.append(successor) }
                        restarts += 1
                        // The old proxy drains its connections meanwhile, as after `strait proxy restart`.
                        drains.enter()
                        Task {
                            await old.shutdown(drainTimeout: .seconds(10))
                            drains.leave()
                        }
                    } catch {
                        tally.error("restart_failed")
                    }
                }
                if now - lastReport >= .seconds(15) {
                    lastReport = now
                    progress("soak: \(Int((now - started).components.seconds)) s, \(tally.connections) connections, \(tally.bytes >> 20) MiB verified, client errors \(tally.errors)")
                }
            }
            for thread in threads { while !thread.isFinished { Thread.sleep(forTimeInterval: 0.01) } }
            let proxy = current.withLock { $0 }
            let all = proxies.withLock { $0 }
            let seconds = (ContinuousClock.now - started).seconds
            var proxyErrors: [String: Int] = [:]
            Self.blocking { await proxy.shutdown(drainTimeout: .seconds(5)) }
            drains.wait()
            for each in all {
                for (kind, count) in Self.errorCounts(each) { proxyErrors[kind, default: 0] += count }
            }
            Self.blocking { await echo.shutdown(gracePeriod: .milliseconds(200)) }
            let end = Self.sample(nil)
            return Report(
                seconds: seconds, connections: tally.connections, bytesVerified: tally.bytes, clientErrors: tally.errors,
                clientErrorsByDatapath: tally.errorsByDatapath, proxyErrors: proxyErrors,
                byBehavior: tally.behaviors, largestStalledPush: tally.largestPush, reloads: reloads, restarts: restarts,
                sockmapUnavailable: proxy.sockmapUnavailable, baseline: baseline, peak: peak.withLock { $0 }, end: end)
        }
    }

    /// Mostly normal clients, with every hostile kind in the mix.
    static func pick(_ random: inout SystemRandomNumberGenerator) -> Behavior {
        let roll = Int.random(in: 0..<100, using: &random)
        switch roll {
        case 0..<50: return .normal
        case 50..<58: return .slowReader
        case 58..<64: return .trickle
        case 64..<74: return .reset
        case 74..<84: return .halfCloseEarly
        case 84..<89: return .neverReads
        case 89..<95: return .idle
        default: return .oversizedHeader
        }
    }

    /// Runs one client of `behavior` against the listener of `datapath` and tallies what it saw,
    /// under that datapath. `tracked`: connect from inside the endpoints cgroup (the skmsg
    /// listener's clients).
    static func client(_ behavior: Behavior, datapath: Datapath, port: UInt16, metricsPort: UInt16, tracked: TestCgroup?, tally: Tally, random: inout SystemRandomNumberGenerator) {
        let connect: () throws -> TestSocket = {
            if let tracked { return try tracked.inside { try HostilePeers.connect(port: port, timeoutSeconds: 10) } }
            return try HostilePeers.connect(port: port, timeoutSeconds: 10)
        }
        do {
            switch behavior {
            case .normal, .slowReader, .halfCloseEarly, .trickle:
                let socket = try connect()
                defer { socket.close() }
                let size = switch behavior {
                case .normal: Int.random(in: 1...(1 << 20), using: &random)
                case .slowReader: 512 << 10
                case .halfCloseEarly: 32 << 10
                default: 5
                }
                let received: (count: Int, firstMismatch: Int?)
                switch behavior {
                case .halfCloseEarly:
                    received = try HostilePeers.halfCloseEarly(socket, pattern: pattern, count: size)
                case .trickle:
                    try HostilePeers.trickle(socket, bytes: pattern.bytes(at: 0, count: size))
                    try socket.shutdownWrite()
                    received = try socket.polledReceiveAndVerify(pattern)
                default:
                    let writer = Thread { try? socket.send(pattern, count: size, chunk: 64 << 10); try? socket.shutdownWrite() }
                    writer.start()
                    defer { while !writer.isFinished { usleep(1000) } }
                    received = behavior == .slowReader
                        ? try HostilePeers.readSlowly(socket, pattern: pattern, bytesPerSecond: 4 << 20)
                        : try socket.polledReceiveAndVerify(pattern)
                }
                if received.firstMismatch != nil { tally.error("bytes_differ", datapath: datapath, behavior: behavior) }
                if received.count != size { tally.error("bytes_missing", datapath: datapath, behavior: behavior) }
                tally.served(behavior, bytes: received.firstMismatch == nil ? received.count : 0)
            case .reset:
                try HostilePeers.resetAfter(try connect(), pattern: pattern, count: 128 << 10)
                tally.served(behavior)
            case .neverReads:
                let socket = try connect()
                tally.pushed(try HostilePeers.pushUntilStalled(socket, pattern: pattern, limit: 64 << 20, stall: .milliseconds(500)))
                resetClose(socket)
                tally.served(behavior)
            case .idle:
                let horde = try HostilePeers.idleHorde(port: port, count: 20)
                Thread.sleep(forTimeInterval: 1)
                for socket in horde { socket.close() }
                tally.served(behavior, connections: horde.count)
            case .oversizedHeader:
                try HostilePeers.oversizedHeader(try HostilePeers.connect(port: metricsPort), size: 1 << 20)
                tally.served(behavior)
            }
        } catch let failure as ReadFailure {
            tally.error(failure.code == ETIMEDOUT ? "timeout" : "read_\(String(cString: strerror(failure.code)))", datapath: datapath, behavior: behavior)
        } catch {
            tally.error("\(error)".prefix(60).description, datapath: datapath, behavior: behavior)
        }
    }

    static func sample(_ proxy: Proxy?) -> Resources {
        let now = ResourceSnapshot.now()
        return Resources(residentMiB: now.resident >> 20, descriptors: now.descriptors, memoryAvailableMiB: now.memoryAvailable >> 20,
                         tcpMemoryMiB: now.tcpMemory >> 20, activeConnections: proxy?.activeConnections ?? 0)
    }

    /// Peaks: the most of everything, the least MemAvailable.
    static func raise(_ peak: inout Resources, with sample: Resources) {
        peak.residentMiB = max(peak.residentMiB, sample.residentMiB)
        peak.descriptors = max(peak.descriptors, sample.descriptors)
        peak.memoryAvailableMiB = min(peak.memoryAvailableMiB, sample.memoryAvailableMiB)
        peak.tcpMemoryMiB = max(peak.tcpMemoryMiB, sample.tcpMemoryMiB)
        peak.activeConnections = max(peak.activeConnections, sample.activeConnections)
    }

    /// `strait_proxy_errors_total` by kind, from the proxy's exposition.
    static func errorCounts(_ proxy: Proxy) -> [String: Int] {
        var counts: [String: Int] = [:]
        for line in proxy.metrics.exposition().split(separator: "\n") where line.hasPrefix("strait_proxy_errors_total{") {
            guard let open = line.range(of: "kind=\""), let close = line[open.upperBound...].firstIndex(of: "\""),
                  let value = Double(line.split(separator: " ").last ?? "")
            else { continue }
            counts[String(line[open.upperBound..<close]), default: 0] += Int(value)
        }
        return counts
    }

    /// Runs async work to the end from this synchronous benchmark.
    static func blocking(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await body()
            done.signal()
        }
        done.wait()
    }
}
