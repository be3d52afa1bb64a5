import Foundation
import StraitBPF
import StraitBenchSupport
import StraitDrop
import StraitSystem

/// `strait bench drop`: a UDP flood through a veth pair between two namespaces the benchmark makes,
/// dropped on the receiving end by source prefix with (a) Strait's XDP program, (b) an nftables set
/// at the netdev ingress hook, (c) iptables rules in the raw table, each with 10, 10,000 and 100,000
/// prefixes. Every configuration is made inside the benchmark's namespaces only, and removed with them.
///
/// The sender is a packet generator of ours: a thread of this process, pinned to one CPU in the
/// sender namespace, runs a `bpf_redirect` XDP program on one 60-byte UDP frame from 198.18.200.2
/// (whose /32 is one of the prefixes) as live frames (`BPF_PROG_TEST_RUN`, as xdp-trafficgen does).
/// The frames cross the veth as XDP frames, with no socket buffer: the receiving end either drops
/// them in its XDP program, or (for nftables and iptables, behind a pass-all XDP program that the
/// veth needs to accept XDP frames at all) builds a socket buffer and runs the stack up to the
/// filter. That receive work runs in softirq on the generator's CPU, so that CPU's softirq time is
/// the receiving side's cost: the report divides the drops by it.
public struct DropBenchmark: Sendable {
    /// How many source prefixes each method is given, one set of rows per count; every set holds
    /// the sender's /32.
    public var prefixCounts = [10, 10_000, 100_000]
    /// Length of each flood, in seconds.
    public var seconds: Double = 3
    /// The CPU the sender (and so the receive softirq) runs on.
    public var cpu = 1
    /// Called with a line of text as each row is measured; called on the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: 10, 10,000 and 100,000 prefixes, 3 s floods, sender on CPU 1.
    public init() {}

    /// The filters compared, each on the receiving veth end: Strait's XDP program, an nftables set
    /// at netdev ingress, iptables rules in the raw table.
    public enum Method: String, Sendable, Codable, CaseIterable {
        case straitXDP = "strait-xdp"
        case nftablesSet = "nftables-set"
        case iptables = "iptables"
    }

    /// Encodes with snake_case keys, as `--json` prints it.
    public struct Report: Sendable, Codable {
        /// One row per prefix count and method, in that order.
        public var rows: [Row]
        /// Length of each flood, in seconds.
        public var seconds: Double
        /// The CPU the sender and the receive softirq ran on.
        public var cpu: Int
        /// Size of the flooded frame, Ethernet header included: 60 bytes.
        public var frameBytes: Int
        /// How the XDP programs were attached (`native (veth)`).
        public var xdpMode: String

        /// One method with one prefix count.
        public struct Row: Sendable, Codable {
            /// The filter measured.
            public var method: Method
            /// How many prefixes it held.
            public var prefixes: Int
            /// Datagrams the sender got out per second.
            public var sentPerSecond: Double
            /// Datagrams the filter dropped per second (its own counter).
            public var droppedPerSecond: Double
            /// Softirq seconds on the sending CPU per wall second (1.0 = the whole CPU).
            public var softirqShare: Double
            /// Drops per softirq CPU-second: the receive side's efficiency.
            public var droppedPerSoftirqSecond: Double
            /// Seconds it took to install the rules.
            public var setupSeconds: Double
        }
    }

    static let frameBytes = 60
    static let port: UInt16 = 46_000

    /// Runs every prefix count × method, blocking for about 9 × ``seconds`` plus rule set-up
    /// (installing 100,000 iptables rules takes seconds).
    /// Makes two network namespaces joined by a veth pair and removes them, with every rule and
    /// program inside, on return, error or interrupt; nothing is changed in the caller's namespace.
    /// Needs `nft`, `iptables` and `iptables-restore` on PATH and root. Throws
    /// ``BenchError/interrupted`` once `shouldStop` returns true (checked between rows).
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        let runner = ProcessRunner()
        for tool in ["nft", "iptables-restore", "iptables"] { _ = try ProcessRunner.locate(tool) }
        guard cpu < ProcessInfo.processInfo.activeProcessorCount else { throw BenchError.conflict("--cpu \(cpu): this machine has \(ProcessInfo.processInfo.activeProcessorCount) CPUs") }
        let lab = try FloodLab()
        defer { lab.tearDown() }

        var rows: [Report.Row] = []
        for count in prefixCounts {
            let prefixes = Self.prefixes(count: count)
            for method in Method.allCases {
                if shouldStop() { throw BenchError.interrupted }
                let started = Date()
                let readDrops = try install(method, prefixes: prefixes, lab: lab, runner: runner)
                let setup = Date().timeIntervalSince(started)
                defer { uninstall(method, lab: lab, runner: runner) }
                let interface = lab.receiverInterface
                let passAll = method == .straitXDP ? nil : try lab.receiver.run { try BPFProgram.loadXDPPass().attachXDP(interface: interface, mode: .native) }
                defer { try? passAll?.close() }
                let before = try readDrops()
                let flood = try lab.flood(seconds: seconds, cpu: cpu)
                let dropped = Double(try readDrops() - before)
                let row = Report.Row(
                    method: method, prefixes: count,
                    sentPerSecond: Double(flood.sent) / flood.seconds,
                    droppedPerSecond: dropped / flood.seconds,
                    softirqShare: flood.softirqSeconds / flood.seconds,
                    droppedPerSoftirqSecond: flood.softirqSeconds > 0 ? dropped / flood.softirqSeconds : 0,
                    setupSeconds: setup)
                progress(String(format: "%@, %d prefixes: %.2f Mpps dropped, softirq %.0f%% of CPU %d, %.2f M drops per softirq CPU-second (setup %.1f s)",
                                method.rawValue, count, row.droppedPerSecond / 1e6, row.softirqShare * 100, cpu, row.droppedPerSoftirqSecond / 1e6, setup))
                rows.append(row)
            }
        }
        return Report(rows: rows, seconds: seconds, cpu: cpu, frameBytes: Self.frameBytes, xdpMode: "native (veth)")
    }

    /// `count` prefixes: the sender's /32 and `count - 1` other /32s from 198.18.0.0/15 (its /24 left out).
    static func prefixes(count: Int) -> [String] {
        var result = [FloodLab.senderIP + "/32"]
        var offset: UInt32 = 0
        while result.count < count {
            let address = UInt32(198) << 24 | UInt32(18) << 16 | offset
            offset += 1
            if (address >> 8) & 0xff == 200 && (address >> 16) & 0xff == 18 { continue }
            result.append("\(address >> 24).\((address >> 16) & 0xff).\((address >> 8) & 0xff).\(address & 0xff)/32")
        }
        return result
    }

    /// Installs the rules; returns a reader of the method's drop counter.
    func install(_ method: Method, prefixes: [String], lab: FloodLab, runner: ProcessRunner) throws -> () throws -> UInt64 {
        switch method {
        case .straitXDP:
            let dropper = try Dropper.open(pinDirectory: lab.pinDirectory, create: true)
            let rules = try prefixes.map { try DropRule(parsing: $0) }
            try dropper.load(DropRuleSet(mode: .block, rules: rules))
            let interface = lab.receiverInterface
            try lab.receiver.run { try dropper.attach(interface: interface, mode: .native) }
            return { try dropper.stats().count(.droppedBlocked).packets }
        case .nftablesSet:
            let file = lab.scratch + "/nft.rules"
            let elements = prefixes.joined(separator: ",\n")
            try """
                table netdev sdrop {
                    set blocked { type ipv4_addr; flags interval; elements = { \(elements) } }
                    chain ingress { type filter hook ingress device "\(lab.receiverInterface)" priority -500; policy accept; ip saddr @blocked counter drop; }
                }

                """.write(toFile: file, atomically: true, encoding: .utf8)
            _ = try runner.run(["ip", "netns", "exec", lab.receiver.name, "nft", "-f", file], timeout: 120)
            return {
                let text = try runner.run(["ip", "netns", "exec", lab.receiver.name, "nft", "list", "chain", "netdev", "sdrop", "ingress"], timeout: 30)
                return Self.firstNumber(after: "counter packets ", in: text)
            }
        case .iptables:
            // One rule per prefix, the sender's last: iptables matches rules in order, so this is
            // the cost of a packet that matches the last of N rules.
            let file = lab.scratch + "/iptables.rules"
            var text = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            for prefix in prefixes.dropFirst() + [prefixes[0]] { text += "-A PREROUTING -s \(prefix) -j DROP\n" }
            text += "COMMIT\n"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            _ = try runner.run(["ip", "netns", "exec", lab.receiver.name, "iptables-restore", file], timeout: 120)
            let last = String(prefixes.count)
            return {
                let text = try runner.run(["ip", "netns", "exec", lab.receiver.name, "iptables", "-t", "raw", "-L", "PREROUTING", last, "-v", "-x", "-n"], timeout: 60)
                return UInt64(text.split(whereSeparator: \.isWhitespace).first ?? "") ?? 0
            }
        }
    }

    func uninstall(_ method: Method, lab: FloodLab, runner: ProcessRunner) {
        switch method {
        case .straitXDP: try? Dropper.removeAll(pinDirectory: lab.pinDirectory)
        case .nftablesSet: _ = try? runner.run(["ip", "netns", "exec", lab.receiver.name, "nft", "delete", "table", "netdev", "sdrop"], timeout: 60)
        case .iptables: _ = try? runner.run(["ip", "netns", "exec", lab.receiver.name, "iptables", "-t", "raw", "-F", "PREROUTING"], timeout: 120)
        }
    }

    static func firstNumber(after marker: String, in text: String) -> UInt64 {
        guard let range = text.range(of: marker) else { return 0 }
        return UInt64(text[range.upperBound...].prefix { $0.isNumber }) ?? 0
    }
}

/// The two namespaces and the veth pair of the benchmark, named after this process.
final class FloodLab: @unchecked Sendable {
    static let receiverIP = "198.18.200.1"
    static let senderIP = "198.18.200.2"

    let receiver: NetworkNamespace
    let sender: NetworkNamespace
    let receiverInterface: String
    let senderInterface: String
    let pinDirectory: String
    let scratch: String
    private(set) var frame: [UInt8] = []

    init() throws {
        let stem = "strait-bench-\(getpid())"
        receiver = try NetworkNamespace.create(stem + "-rx")
        do { sender = try NetworkNamespace.create(stem + "-tx") } catch {
            receiver.delete()
            throw error
        }
        receiverInterface = "sdrb\(getpid() % 100_000)a"
        senderInterface = "sdrb\(getpid() % 100_000)b"
        pinDirectory = BPFFS.defaultMount + "/" + stem + "/drop"
        scratch = FileManager.default.temporaryDirectory.path + "/" + stem
        do {
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            let peer = senderInterface
            try NetworkNamespace.runIP(["-n", receiver.name, "link", "add", receiverInterface, "type", "veth", "peer", "name", peer, "netns", sender.name])
            try NetworkNamespace.runIP(["-n", receiver.name, "addr", "add", Self.receiverIP + "/24", "dev", receiverInterface])
            try NetworkNamespace.runIP(["-n", sender.name, "addr", "add", Self.senderIP + "/24", "dev", peer])
            try NetworkNamespace.runIP(["-n", receiver.name, "link", "set", receiverInterface, "up"])
            try NetworkNamespace.runIP(["-n", sender.name, "link", "set", peer, "up"])
            frame = Self.udpFrame(from: try Self.hardwareAddress(peer, in: sender), to: try Self.hardwareAddress(receiverInterface, in: receiver))
            try BPFFS.ensureMounted()
        } catch {
            tearDown()
            throw error
        }
    }

    func tearDown() {
        try? Dropper.removeAll(pinDirectory: pinDirectory)
        try? BPFFS.removeTree((pinDirectory as NSString).deletingLastPathComponent)
        receiver.delete()
        sender.delete()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    struct Flood {
        var sent: Int
        var seconds: Double
        var softirqSeconds: Double
    }

    /// Generates frames for `seconds` from a thread in the sender namespace pinned to `cpu`; at most
    /// 500 M frames.
    func flood(seconds: Double, cpu: Int) throws -> Flood {
        let (senderInterface, frame) = (self.senderInterface, self.frame)
        return try sender.run {
            try SocketCall.pinCurrentThread(toCPU: cpu)
            let generator = try BPFProgram.loadXDPRedirect(toIfindex: try NetworkInterface(named: senderInterface).index)
            // Chunks sized to last about 50 ms at the rate seen so far, so the deadline holds even
            // when the receiver is slow (iptables with 100,000 rules).
            var chunk: UInt32 = 10_000
            var sent = 0
            let softirqBefore = try Self.softirqTicks(cpu: cpu)
            let start = SocketCall.monotonicNanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            while sent < 500_000_000 && SocketCall.monotonicNanoseconds() < deadline {
                let chunkStart = SocketCall.monotonicNanoseconds()
                try generator.runLive(frame: frame, repetitions: chunk)
                sent += Int(chunk)
                let rate = Double(chunk) / (Double(SocketCall.monotonicNanoseconds() - chunkStart) / 1e9)
                chunk = UInt32(min(max(rate * 0.05, 1_000), 1_000_000))
            }
            let elapsed = Double(SocketCall.monotonicNanoseconds() - start) / 1e9
            let softirq = Double(try Self.softirqTicks(cpu: cpu) - softirqBefore) / Double(sysconf(Int32(_SC_CLK_TCK)))
            return Flood(sent: sent, seconds: elapsed, softirqSeconds: softirq)
        }
    }

    /// Ethernet (to the receiver's address) + IPv4 (with its checksum) + UDP to port 46000, 60 bytes.
    static func udpFrame(from source: [UInt8], to destination: [UInt8]) -> [UInt8] {
        var ip: [UInt8] = [0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0] + IPAddress(senderIP)!.bytes + IPAddress(receiverIP)!.bytes
        var sum: UInt32 = 0
        for index in stride(from: 0, to: ip.count, by: 2) { sum += UInt32(ip[index]) << 8 | UInt32(ip[index + 1]) }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        let checksum = ~UInt16(sum)
        ip[10] = UInt8(checksum >> 8)
        ip[11] = UInt8(checksum & 0xff)
        let port = DropBenchmark.port
        let udp: [UInt8] = [0xb3, 0xb0, UInt8(port >> 8), UInt8(port & 0xff), 0, 26, 0, 0] + [UInt8](repeating: 0x5a, count: 18)
        return destination + source + [0x08, 0x00] + ip + udp
    }

    /// The hardware address of `interface` in `namespace`, from `ip -br link`.
    static func hardwareAddress(_ interface: String, in namespace: NetworkNamespace) throws -> [UInt8] {
        let text = try NetworkNamespace.runIP(["-n", namespace.name, "-br", "link", "show", "dev", interface])
        let fields = text.split(whereSeparator: \.isWhitespace)
        guard fields.count >= 3 else { throw BenchError.conflict("cannot read the address of \(interface): \(text)") }
        let bytes = fields[2].split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard bytes.count == 6 else { throw BenchError.conflict("cannot read the address of \(interface): \(text)") }
        return bytes
    }

    /// The softirq column of `cpuN` in /proc/stat, in clock ticks.
    static func softirqTicks(cpu: Int) throws -> UInt64 {
        let text = try String(contentsOfFile: "/proc/stat", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu\(cpu) ") }) else { return 0 }
        let fields = line.split(separator: " ")
        return fields.count > 7 ? UInt64(fields[7]) ?? 0 : 0
    }
}

/// Grouped bars: one group per prefix count, one bar per method.
public struct DropBenchmarkChart {
    /// The measurement drawn.
    public var report: DropBenchmark.Report

    /// A chart of `report`; nothing is drawn until ``render(width:height:)``.
    public init(report: DropBenchmark.Report) { self.report = report }

    /// The SVG document as text, `width` × `height` px: drops per softirq CPU-second in millions,
    /// one group of bars per prefix count. Pure: writes no file.
    public func render(width: Double = 720, height: Double = 420) -> String {
        let left = 80.0, right = 20.0, top = 50.0, bottom = 60.0
        let colors: [DropBenchmark.Method: String] = [.straitXDP: "#1f77b4", .nftablesSet: "#ff7f0e", .iptables: "#888888"]
        let groups = Array(Set(report.rows.map(\.prefixes))).sorted()
        let maxY = max(report.rows.map(\.droppedPerSoftirqSecond).max() ?? 1, 1) * 1.1 / 1e6
        let groupWidth = (width - left - right) / Double(max(groups.count, 1))
        let barWidth = groupWidth * 0.8 / Double(DropBenchmark.Method.allCases.count)
        func py(_ y: Double) -> Double { height - bottom - y / maxY * (height - top - bottom) }
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="22" text-anchor="middle" font-size="15">UDP drops per softirq CPU-second by source prefix (veth, 60 B frames)</text>
            <line x1="\(left)" y1="\(height - bottom)" x2="\(width - right)" y2="\(height - bottom)" stroke="black"/>
            <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="black"/>
            <text x="18" y="\(height / 2)" transform="rotate(-90 18 \(height / 2))" text-anchor="middle">million drops per CPU-second</text>
            <text x="\(width / 2)" y="\(height - 14)" text-anchor="middle">prefixes in the rule set</text>

            """
        for step in 0...4 {
            let value = maxY / 1.1 * Double(step) / 4
            svg += "<text x=\"\(left - 8)\" y=\"\(py(value) + 4)\" text-anchor=\"end\">\(String(format: "%.1f", value))</text>\n"
            svg += "<line x1=\"\(left)\" y1=\"\(py(value))\" x2=\"\(width - right)\" y2=\"\(py(value))\" stroke=\"#ddd\"/>\n"
        }
        for (groupIndex, prefixes) in groups.enumerated() {
            let groupLeft = left + Double(groupIndex) * groupWidth + groupWidth * 0.1
            svg += "<text x=\"\(groupLeft + groupWidth * 0.4)\" y=\"\(height - bottom + 18)\" text-anchor=\"middle\">\(prefixes)</text>\n"
            for (methodIndex, method) in DropBenchmark.Method.allCases.enumerated() {
                guard let row = report.rows.first(where: { $0.prefixes == prefixes && $0.method == method }) else { continue }
                let value = row.droppedPerSoftirqSecond / 1e6
                let x = groupLeft + Double(methodIndex) * barWidth
                svg += "<rect x=\"\(x)\" y=\"\(py(value))\" width=\"\(barWidth - 2)\" height=\"\(py(0) - py(value))\" fill=\"\(colors[method]!)\"/>\n"
            }
        }
        for (index, method) in DropBenchmark.Method.allCases.enumerated() {
            let y = top - 14 + Double(index) * 16
            svg += "<rect x=\"\(width - right - 150)\" y=\"\(y - 9)\" width=\"12\" height=\"10\" fill=\"\(colors[method]!)\"/>\n"
            svg += "<text x=\"\(width - right - 132)\" y=\"\(y)\">\(method.rawValue)</text>\n"
        }
        return svg + "</svg>\n"
    }
}
