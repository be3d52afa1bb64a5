import Foundation
import StraitLB
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
import StraitBenchSupport
#endif

/// `strait bench lb`: what choosing a backend costs a local client, through Strait's socket LB
/// (lb.bpf.c at connect time), iptables DNAT laid out as kube-proxy's iptables mode (one chain per
/// service, probability rules, the measured service last), nftables DNAT through a verdict map
/// (kube-proxy's nftables mode), and a direct connection to a backend (the bound), each at 10,
/// 1,000 and 10,000 services of two backends.
///
/// Each method has a network namespace of its own (backends 198.18.1.1 and 198.18.1.2 on its
/// loopback, served by threads of this process; virtual addresses from 198.19.0.0/16 routed to
/// loopback), so all four are set up at once and measured interleaved, round after round; the
/// report gives medians. Strait's programs attach to a cgroup the benchmark makes. Every rule,
/// namespace and cgroup is the benchmark's own and is removed with it.
///
/// The client is a child process (this executable, ``clientCommand``) that joins the method's
/// namespace and, for Strait, the cgroup, before it makes a socket: so sockets of the other
/// methods never pass Strait's programs. It runs one closed loop: short connections (connect,
/// 64-byte request, 64-byte answer, close with a reset so no TIME_WAIT piles up) per second, or
/// bulk throughput over one long connection.
public struct LBBenchmark: Sendable {
    /// How many services each method is given, one set of rows per count (at most 65,024, the
    /// virtual addresses in 198.19.0.0/16); the measured service is the last.
    public var serviceCounts = [10, 1_000, 10_000]
    /// Length of each client run, in seconds.
    public var seconds: Double = 1
    /// Rounds of interleaved runs per service count; the rows hold their medians.
    public var rounds = 3
    /// How to start the client: this executable and the hidden subcommand that runs ``Client``.
    public var clientCommand: [String] = []
    /// Called with a line of text as each row is measured; called on the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: 10, 1,000 and 10,000 services, 1 s runs, 3 rounds; ``clientCommand``
    /// must still be set.
    public init() {}

    /// The ways of reaching a backend that are compared.
    public enum Method: String, Sendable, Codable, CaseIterable {
        case straitLB = "strait-lb"
        case iptables = "iptables-dnat"
        case nftables = "nftables-vmap"
        case direct
    }

    /// Encodes with snake_case keys, as `--json` prints it.
    public struct Report: Sendable, Codable {
        /// One row per service count and method, in that order.
        public var rows: [Row]
        /// Length of each client run, in seconds.
        public var seconds: Double
        /// Rounds each median is taken over.
        public var rounds: Int
        /// `iptables -V` of this machine (legacy or nf_tables backend matters to the DNAT rows);
        /// `?` if it could not be run.
        public var iptablesVersion: String

        /// One method at one service count.
        public struct Row: Sendable, Codable {
            /// How the client reached a backend.
            public var method: Method
            /// Services installed when it was measured.
            public var services: Int
            /// Short connections per second (median over rounds).
            public var shortPerSecond: Double
            /// Bulk throughput over one connection, bits per second (median over rounds).
            public var bulkBitsPerSecond: Double
            /// Seconds it took to install the services.
            public var setupSeconds: Double
        }
    }

    static let backends = [IPAddress("198.18.1.1")!, IPAddress("198.18.1.2")!]
    static let backendPort: UInt16 = 8080
    static let servicePort: UInt16 = 80

    /// The virtual address of service `index` (198.19.0.0/16, skipping .0 and .255).
    static func vip(_ index: Int) -> IPAddress {
        let host = index % 254 + 1
        let net = index / 254
        return IPAddress("198.19.\(net).\(host)")!
    }

    /// Runs every service count × method × round, blocking for about 2 × ``seconds`` × 4 ×
    /// ``rounds`` per count plus rule set-up and one client process start per run.
    /// Makes four network namespaces, a cgroup and a ``LoadBalancer`` on it, and removes them all
    /// on return, error or interrupt. Needs `nft`, `iptables` and `iptables-restore` on PATH, root,
    /// and ``clientCommand``; throws ``BenchError/conflict(_:)`` without them.
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        let runner = ProcessRunner()
        for tool in ["nft", "iptables-restore", "iptables"] { _ = try ProcessRunner.locate(tool) }
        guard !clientCommand.isEmpty else { throw BenchError.conflict("no client command set") }
        guard serviceCounts.allSatisfy({ $0 <= 254 * 256 }) else { throw BenchError.conflict("at most \(254 * 256) services") }
        let stem = "strait-bench-\(getpid())-lb"
        var labs: [Method: LBBenchLab] = [:]
        defer { for lab in labs.values { lab.tearDown() } }
        for method in Method.allCases { labs[method] = try LBBenchLab(name: stem + "-" + method.rawValue.prefix(4)) }
        let cgroup = try Cgroup.root().makeChild(named: stem)
        defer { try? cgroup.remove() }
        let balancer = try LoadBalancer(cgroup: cgroup, capacity: max(serviceCounts.max() ?? 10, 16))
        defer { balancer.close() }
        let version = (try? runner.run(["iptables", "-V"], timeout: 10))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"

        var rows: [Report.Row] = []
        for count in serviceCounts {
            var setup: [Method: Double] = [:]
            for method in Method.allCases {
                if shouldStop() { throw BenchError.interrupted }
                let started = Date()
                try install(method, count: count, lab: labs[method]!, balancer: balancer, runner: runner)
                setup[method] = Date().timeIntervalSince(started)
            }
            var short: [Method: [Double]] = [:]
            var bulk: [Method: [Double]] = [:]
            for _ in 0..<rounds {
                for method in Method.allCases {
                    if shouldStop() { throw BenchError.interrupted }
                    let target = method == .direct ? "\(Self.backends[0]):\(Self.backendPort)" : "\(Self.vip(count - 1)):\(Self.servicePort)"
                    let inCgroup = method == .straitLB ? cgroup.path : nil
                    short[method, default: []].append(try client(labs[method]!, target: target, mode: "short", cgroup: inCgroup, runner: runner))
                    bulk[method, default: []].append(try client(labs[method]!, target: target, mode: "bulk", cgroup: inCgroup, runner: runner))
                }
            }
            for method in Method.allCases {
                let row = Report.Row(
                    method: method, services: count, shortPerSecond: median(short[method]!),
                    bulkBitsPerSecond: median(bulk[method]!), setupSeconds: setup[method]!)
                progress(String(format: "%@, %d services: %.0f short connections/s, bulk %.2f Gbit/s (setup %.1f s)",
                                method.rawValue, count, row.shortPerSecond, row.bulkBitsPerSecond / 1e9, row.setupSeconds))
                rows.append(row)
            }
            for method in Method.allCases where method != .straitLB { uninstall(method, lab: labs[method]!, runner: runner) }
        }
        return Report(rows: rows, seconds: seconds, rounds: rounds, iptablesVersion: version)
    }

    func client(_ lab: LBBenchLab, target: String, mode: String, cgroup: String?, runner: ProcessRunner) throws -> Double {
        // Not under `ip netns exec`: it remounts /sys, hiding the cgroup the client must join.
        let command = clientCommand + ["--netns", lab.namespace.name]
            + ["--target", target, "--mode", mode, "--seconds", String(seconds)] + (cgroup.map { ["--cgroup", $0] } ?? [])
        let output = try runner.run(command, timeout: seconds + 30)
        guard let value = Double(output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchError.conflict("the lb client printed \(output.prefix(200))")
        }
        return value
    }

    func install(_ method: Method, count: Int, lab: LBBenchLab, balancer: LoadBalancer, runner: ProcessRunner) throws {
        let endpoints = Self.backends.map { "\($0):\(Self.backendPort)" }
        switch method {
        case .direct:
            return
        case .straitLB:
            try balancer.apply((0..<count).map { index in
                LBServiceConfig(name: "svc\(index)", address: Self.vip(index), port: Self.servicePort,
                                backends: Self.backends.map { LBBackendConfig(address: $0, port: Self.backendPort) })
            })
        case .iptables:
            // kube-proxy's iptables mode: KUBE-SERVICES matches each service's address and port in
            // turn and jumps to its chain, which picks an endpoint chain by probability; the
            // endpoint chain DNATs. The measured service (the last index) is the last rule.
            var chains = "*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n"
            var rules = "-A OUTPUT -j KUBE-SERVICES\n"
            for index in 0..<count {
                chains += ":KUBE-SVC-\(index) - [0:0]\n:KUBE-SEP-\(index)-0 - [0:0]\n:KUBE-SEP-\(index)-1 - [0:0]\n"
                rules += "-A KUBE-SERVICES -d \(Self.vip(index))/32 -p tcp -m tcp --dport \(Self.servicePort) -j KUBE-SVC-\(index)\n"
                rules += "-A KUBE-SVC-\(index) -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-\(index)-0\n"
                rules += "-A KUBE-SVC-\(index) -j KUBE-SEP-\(index)-1\n"
                rules += "-A KUBE-SEP-\(index)-0 -p tcp -m tcp -j DNAT --to-destination \(endpoints[0])\n"
                rules += "-A KUBE-SEP-\(index)-1 -p tcp -m tcp -j DNAT --to-destination \(endpoints[1])\n"
            }
            let file = lab.scratch + "/iptables.rules"
            try (chains + rules + "COMMIT\n").write(toFile: file, atomically: true, encoding: .utf8)
            _ = try runner.run(["ip", "netns", "exec", lab.namespace.name, "iptables-restore", file], timeout: 600)
        case .nftables:
            // kube-proxy's nftables mode: one verdict map from address . protocol . port to the
            // service's chain, which picks an endpoint chain with numgen; the endpoint chain DNATs.
            var text = "table ip strait-bench-lb {\n"
            var elements: [String] = []
            for index in 0..<count {
                elements.append("\(Self.vip(index)) . tcp . \(Self.servicePort) : goto svc-\(index)")
                // Chains before the rules that jump to them; every statement ends with `;`.
                text += "  chain sep-\(index)-0 { meta l4proto tcp dnat to \(endpoints[0]); }\n"
                text += "  chain sep-\(index)-1 { meta l4proto tcp dnat to \(endpoints[1]); }\n"
                text += "  chain svc-\(index) { numgen random mod 2 vmap { 0 : goto sep-\(index)-0, 1 : goto sep-\(index)-1 }; }\n"
            }
            text += "  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; elements = { \(elements.joined(separator: ",\n    ")) }; }\n"
            text += "  chain output { type nat hook output priority -100; policy accept; ip daddr . meta l4proto . th dport vmap @service-ips; }\n}\n"
            let file = lab.scratch + "/nft.rules"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            _ = try runner.run(["ip", "netns", "exec", lab.namespace.name, "nft", "-f", file], timeout: 600)
        }
    }

    func uninstall(_ method: Method, lab: LBBenchLab, runner: ProcessRunner) {
        switch method {
        case .straitLB, .direct: return
        case .iptables:
            _ = try? runner.run(["ip", "netns", "exec", lab.namespace.name, "iptables", "-t", "nat", "-F"], timeout: 600)
            _ = try? runner.run(["ip", "netns", "exec", lab.namespace.name, "iptables", "-t", "nat", "-X"], timeout: 600)
        case .nftables:
            _ = try? runner.run(["ip", "netns", "exec", lab.namespace.name, "nft", "delete", "table", "ip", "strait-bench-lb"], timeout: 600)
        }
    }

    /// The client side, run in its own process (`strait bench lb-client`): joins `cgroup` if given
    /// and then the namespace, and runs one closed loop against `target` for `seconds` and returns short connections per
    /// second, or bulk bits per second.
    public enum Client {
        /// Moves this whole process into `cgroup` (when given), then runs the loop against `target`
        /// for `seconds` on a new thread inside the network namespace `namespace` while the caller
        /// waits: returns short connections per second (`bulk` false) or bits per second. Meant for
        /// the child process only.
        public static func run(target: SocketAddress, bulk: Bool, seconds: Double, cgroup: String?, namespace: String) throws -> Double {
            if let cgroup { try Cgroup(path: cgroup).add() }
            return try NetworkNamespace(name: namespace).run { try loop(target: target, bulk: bulk, seconds: seconds) }
        }

        static func loop(target: SocketAddress, bulk: Bool, seconds: Double) throws -> Double {
            let deadline = SocketCall.monotonicNanoseconds() + UInt64(seconds * 1e9)
            let started = SocketCall.monotonicNanoseconds()
            if bulk {
                let fd = try open(target)
                defer { closeDescriptor(fd) }
                let chunk = [UInt8](repeating: 0x5a, count: 256 << 10)
                var bytes = 0
                while SocketCall.monotonicNanoseconds() < deadline {
                    bytes += try systemCall("write") { chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
                }
                return Double(bytes) * 8 / (Double(SocketCall.monotonicNanoseconds() - started) / 1e9)
            }
            var request = [UInt8](repeating: 0x61, count: 64)
            var count = 0
            while SocketCall.monotonicNanoseconds() < deadline {
                let fd = try open(target)
                defer {
                    try? SocketCall.setResetOnClose(fd)
                    closeDescriptor(fd)
                }
                // 64 bytes fit any socket buffer: one write sends them all.
                try systemCall("write") { request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
                var received = 0
                while received < 64 {
                    let got = try systemCall("read") { request.withUnsafeMutableBytes { read(fd, $0.baseAddress! + received, 64 - received) } }
                    guard got > 0 else { throw BenchError.conflict("the backend closed before answering") }
                    received += got
                }
                count += 1
            }
            return Double(count) / (Double(SocketCall.monotonicNanoseconds() - started) / 1e9)
        }

        static func open(_ target: SocketAddress) throws -> CInt {
            guard case .ip(let address, _) = target else { throw BenchError.conflict("--target: an IP address and port") }
            // Blocking, unlike SocketCall.socket's: a closed loop waits in the kernel.
            let fd = try SocketCall.socket(domain: address.isIPv4 ? AF_INET : AF_INET6, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
            do {
                try SocketCall.setOption(fd, level: CInt(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
                try SocketCall.connect(fd, to: target)
            } catch {
                closeDescriptor(fd)
                throw error
            }
            return fd
        }
    }
}

/// One method's namespace: backends on its loopback served by threads of this process, the
/// virtual range routed to loopback, a scratch folder for rule files.
final class LBBenchLab: @unchecked Sendable {
    let namespace: NetworkNamespace
    let scratch: String
    private var listeners: [CInt] = []

    init(name: String) throws {
        namespace = try NetworkNamespace.create(name)
        scratch = FileManager.default.temporaryDirectory.path + "/" + name
        do {
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            for backend in LBBenchmark.backends {
                try NetworkNamespace.runIP(["-n", name, "addr", "add", "\(backend)/32", "dev", "lo"])
            }
            try NetworkNamespace.runIP(["-n", name, "route", "add", "local", "198.19.0.0/16", "dev", "lo"])
            for backend in LBBenchmark.backends {
                let fd = try namespace.run { try Self.listen(.ip(backend, port: LBBenchmark.backendPort)) }
                listeners.append(fd)
                Thread.detachNewThread { Self.serve(fd) }
            }
        } catch {
            tearDown()
            throw error
        }
    }

    static func listen(_ address: SocketAddress) throws -> CInt {
        // Blocking: the serving thread waits in accept and read.
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        try SocketCall.bind(fd, to: address)
        try SocketCall.listen(fd, backlog: 4096)
        return fd
    }

    /// One connection at a time (the client is a closed loop of one): answers the first 64 bytes
    /// with 64 bytes, then reads to the end.
    static func serve(_ listener: CInt) {
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        let answer = [UInt8](repeating: 0x62, count: 64)
        while true {
            let fd: CInt
            do {
                guard case .done(let accepted) = try SocketCall.accept(listener, nonBlocking: false) else { continue }
                fd = accepted
            } catch where error.errno == .connectionAbort { continue } catch { return }
            var received = 0
            var answered = false
            while true {
                let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if got <= 0 { break }
                received += got
                if !answered && received >= 64 {
                    answered = true
                    _ = answer.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                }
            }
            closeDescriptor(fd)
        }
    }

    func tearDown() {
        // shutdown wakes the accept threads; they exit on the error.
        for fd in listeners { try? SocketCall.shutdown(fd, how: CInt(SHUT_RDWR)); closeDescriptor(fd) }
        listeners = []
        namespace.delete()
        try? FileManager.default.removeItem(atPath: scratch)
    }
}
