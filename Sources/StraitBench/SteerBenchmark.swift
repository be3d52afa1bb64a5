import Atomics
import Foundation
import StraitBenchSupport
import StraitNet
import StraitSteer
import StraitSystem

/// `strait bench steer`: what steering a SO_REUSEPORT group costs and buys, in a network namespace
/// the benchmark creates (and deletes): balance over 4 members, keys remapped when one of 8 leaves,
/// failed connections across restarts under load, and UDP datagrams per second per policy.
/// Every part is bounded in count and time; the whole run takes about a minute.
public struct SteerBenchmark: Sendable {
    /// TCP connections made for each balance row (4 members, counted by which accepted).
    public var balanceConnections = 10_000
    /// UDP client ports placed before and after one of 8 members leaves, in the remap part.
    public var remapClients = 4000
    /// Server replacements per restart drill.
    public var restarts = 20
    /// Connections per second the restart drill's client opens.
    public var restartRate = 2000
    /// Length of each UDP throughput sample, in seconds (the sender-path sample takes half of it).
    public var udpSeconds = 1.0
    /// UDP rounds over every policy; the rows hold the median sample.
    public var udpRepeats = 3
    /// Microseconds of work per request on the restarted server (a busy server has connections
    /// waiting in its accept queues, which is what a restart can lose).
    public var serverWorkMicroseconds = 600
    /// Which parts to run.
    public var parts: Set<Part> = Set(Part.allCases)
    /// Called with a line of text as each part starts; called on the benchmark's thread.
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The defaults above: every part, about a minute in all.
    public init() {}

    /// The parts of the benchmark, chosen with `strait bench steer --parts`.
    public enum Part: String, Sendable, CaseIterable, Codable {
        case balance, remap, restart, udp
    }

    /// Every part's rows (empty for parts not run), encoded as `--json` prints it.
    public struct Report: Sendable, Codable {
        /// One row per TCP policy, and one for the UDP payload policy.
        public var balance: [Balance]
        /// The kernel's hash and 4-tuple consistent hashing, when one member of 8 leaves.
        public var remap: [Remap]
        /// One drill per ``RestartDrill/Mode``, in this process.
        public var restart: [RestartDrill.Result]
        /// Strait's restart between real processes (`strait steer serve`, idle echo server).
        public var restartAcrossProcesses: RestartDrill.Result?
        /// One row per UDP policy.
        public var udp: [Throughput]
        /// The running kernel's release (`uname -r`), since migration and steering behaviour depend
        /// on it.
        public var kernel: String

        /// How evenly one policy spread connections or datagrams over 4 members.
        public struct Balance: Sendable, Codable {
            /// The policy, as ``SteeringPolicy/description`` writes it.
            public var policy: String
            /// `tcp` or `udp`.
            public var transport: String
            /// Connections (or datagrams) each member received, in joining order.
            public var perMember: [Int]
            /// Most loaded member over least loaded; nil (JSON `null`) when one got nothing, since
            /// JSON has no infinity.
            public var maxOverMin: Double?

            enum CodingKeys: String, CodingKey { case policy, transport, perMember, maxOverMin }

            /// Writes `maxOverMin` as `null` when nil, so every row has the same keys.
            public func encode(to encoder: Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(policy, forKey: .policy)
                try container.encode(transport, forKey: .transport)
                try container.encode(perMember, forKey: .perMember)
                try container.encode(maxOverMin, forKey: .maxOverMin)
            }
        }

        /// How many clients changed member when one of 8 left.
        public struct Remap: Sendable, Codable {
            /// The policy, as ``SteeringPolicy/description`` writes it.
            public var policy: String
            /// Clients placed before the member left.
            public var clients: Int
            /// Clients that reached a different member afterwards, including those of the member
            /// that left.
            public var moved: Int
            /// `moved` over `clients`: about 1/8 is the least possible (the leaving member's
            /// share).
            public var fraction: Double
        }

        /// UDP datagrams per second into a 4-socket group under one policy.
        public struct Throughput: Sendable, Codable {
            /// The policy, as ``SteeringPolicy/description`` writes it.
            public var policy: String
            /// Median of the samples.
            public var datagramsPerSecond: Double
            /// Lowest and highest sample: the run's noise.
            public var lowest: Double
            /// Highest sample, datagrams per second.
            public var highest: Double
            /// Median relative to the kernel hash's median in the same run.
            public var relative: Double
            /// Datagrams/s one sender pushes through the kernel's receive path (socket lookup, the
            /// steering program, queueing or dropping at a full socket) with nobody reading: the
            /// program's cost without the receivers competing for the CPU. Median.
            public var senderPathPerSecond: Double
            /// ``senderPathPerSecond`` relative to the kernel hash's in the same run.
            public var senderPathRelative: Double
        }
    }

    static let tcpPolicies: [SteeringPolicy] = [.kernel, .consistentHash(.clientAddress), .consistentHash(.fourTuple), .activeActive, .activeBackup]
    static let udpPolicies: [SteeringPolicy] = [
        .kernel, .consistentHash(.clientAddress), .consistentHash(.fourTuple), .payload(offset: 0, length: 8, fallback: .kernelHash), .activeActive,
        .activeBackup,
    ]

    /// Runs the selected parts in a network namespace `strait-bench-PID-sstr` it creates and
    /// deletes (with a control folder under /tmp), blocking for about a minute with every part.
    /// Throws the first failure; ``shouldStop`` is checked between rows and skips what is left.
    public func run(shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> Report {
        let namespace = try NetworkNamespace.create("strait-bench-\(getpid())-sstr")
        defer { namespace.delete() }
        let controlDirectory = "/tmp/strait-bench-\(getpid())-sstr"
        try FileManager.default.createDirectory(atPath: controlDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: controlDirectory) }

        var balance: [Report.Balance] = []
        for policy in Self.tcpPolicies where parts.contains(.balance) && !shouldStop() {
            progress("balance: \(balanceConnections) TCP connections over 4 members, \(policy)")
            balance.append(try namespace.run { try tcpBalance(policy) })
        }
        if parts.contains(.balance) && !shouldStop() {
            progress("balance: \(balanceConnections) UDP sessions over 4 members, payload key")
            balance.append(try namespace.run { try payloadBalance() })
        }
        var remap: [Report.Remap] = []
        for policy in [SteeringPolicy.kernel, .consistentHash(.fourTuple)] where parts.contains(.remap) && !shouldStop() {
            progress("remap: \(remapClients) clients, one of 8 members leaves, \(policy)")
            remap.append(try namespace.run { try remapFraction(policy) })
        }
        var restart: [RestartDrill.Result] = []
        for mode in RestartDrill.Mode.allCases where parts.contains(.restart) && !shouldStop() {
            progress("restart: \(restarts) restarts under \(restartRate) connections/s, \(serverWorkMicroseconds) µs per request, \(mode.rawValue)")
            let (restarts, rate, work) = (restarts, restartRate, serverWorkMicroseconds)
            restart.append(try Self.waitFor {
                try await RestartDrill.run(
                    mode: mode, restarts: restarts, connectionsPerSecond: rate, workMicroseconds: work,
                    namespace: namespace, controlDirectory: controlDirectory)
            })
        }
        var acrossProcesses: RestartDrill.Result?
        if parts.contains(.restart) && !shouldStop() {
            progress("restart: \(restarts) restarts of `strait steer serve` processes under \(restartRate) connections/s")
            acrossProcesses = try crossProcessRestart(namespace: namespace, controlDirectory: controlDirectory)
        }
        var samples: [String: [Double]] = [:]
        var pathSamples: [String: [Double]] = [:]
        for round in 0..<udpRepeats where parts.contains(.udp) && !shouldStop() {
            for policy in Self.udpPolicies where !shouldStop() {
                progress("udp: 4-socket group, \(policy), round \(round + 1) of \(udpRepeats)")
                samples[policy.description, default: []].append(try udpThroughput(policy, namespace: namespace))
                pathSamples[policy.description, default: []].append(try namespace.run { try senderPath(policy) })
            }
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        let kernelRate = samples["kernel"].map(median) ?? 0
        let kernelPath = pathSamples["kernel"].map(median) ?? 0
        let udp = Self.udpPolicies.compactMap { policy -> Report.Throughput? in
            guard let values = samples[policy.description], !values.isEmpty else { return nil }
            let rate = median(values)
            let path = pathSamples[policy.description].map(median) ?? 0
            return Report.Throughput(
                policy: policy.description, datagramsPerSecond: rate, lowest: values.min()!, highest: values.max()!,
                relative: kernelRate > 0 ? rate / kernelRate : 0,
                senderPathPerSecond: path, senderPathRelative: kernelPath > 0 ? path / kernelPath : 0)
        }
        return Report(balance: balance, remap: remap, restart: restart, restartAcrossProcesses: acrossProcesses, udp: udp, kernel: KernelRelease.current.text)
    }

    /// Runs async work to completion from the command's main thread (never a concurrency thread,
    /// so blocking it here cannot starve the tasks it waits for).
    static func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<T, Error>!
        Task {
            do { result = .success(try await body()) } catch { result = .failure(error) }
            done.signal()
        }
        done.wait()
        return try result.get()
    }

    // MARK: Balance

    /// 10,000 connections, each from its own address in 127.0.0.0/8 (so client-address hashing has
    /// clients to spread), accepted in batches; counts per listener.
    func tcpBalance(_ policy: SteeringPolicy) throws -> Report.Balance {
        let group = try BenchGroup(policy: policy, members: 4, udp: false)
        defer { group.close() }
        var counts = [Int](repeating: 0, count: 4)
        for i in 0..<balanceConnections {
            let client = try RawSocket.connect(port: group.port, sourceAddress: RawSocket.clientAddress(i))
            closeDescriptor(client)
            if i % 256 == 255 || i == balanceConnections - 1 {
                for (index, listener) in group.sockets.enumerated() { counts[index] += RawSocket.acceptQueued(listener).map(closeDescriptor).count }
            }
        }
        return Report.Balance(policy: policy.description, transport: "tcp", perMember: counts, maxOverMin: Self.spread(counts))
    }

    /// 10,000 datagrams with 10,000 different 8-byte session keys under the payload policy.
    func payloadBalance() throws -> Report.Balance {
        let policy = SteeringPolicy.payload(offset: 0, length: 8, fallback: .kernelHash)
        let group = try BenchGroup(policy: policy, members: 4, udp: true)
        defer { group.close() }
        let client = try RawSocket.udp(port: 0, reusePort: false)
        defer { closeDescriptor(client) }
        var counts = [Int](repeating: 0, count: 4)
        for i in 0..<balanceConnections {
            let key = withUnsafeBytes(of: UInt64(i).bigEndian) { Array($0) }
            try RawSocket.sendDatagram(client, key, toPort: group.port)
            if i % 256 == 255 || i == balanceConnections - 1 {
                for (index, socket) in group.sockets.enumerated() { counts[index] += RawSocket.drainDatagrams(socket).count }
            }
        }
        return Report.Balance(policy: policy.description, transport: "udp", perMember: counts, maxOverMin: Self.spread(counts))
    }

    /// Most over least; nil when the least is 0 (one member got nothing).
    static func spread(_ counts: [Int]) -> Double? {
        guard let low = counts.min(), let high = counts.max() else { return 0 }
        return low == 0 ? nil : Double(high) / Double(low)
    }

    // MARK: Remap

    /// Each client (its own source port) sends one datagram to a group of 8; member 3 leaves (for
    /// consistent-hash it leaves the steering, then closes; for the kernel it just closes); every
    /// client sends again from the same port; the fraction that reached a different member.
    func remapFraction(_ policy: SteeringPolicy) throws -> Report.Remap {
        let group = try BenchGroup(policy: policy, members: 8, udp: true)
        defer { group.close() }
        let ports = (0..<remapClients).map { UInt16(20_000 + $0) }
        func placement() throws -> [Int: Int] {
            var found: [Int: Int] = [:]
            for chunk in stride(from: 0, to: ports.count, by: 256) {
                for port in ports[chunk..<min(chunk + 256, ports.count)] {
                    let client = try RawSocket.udp(port: port, reusePort: false)
                    try RawSocket.sendDatagram(client, withUnsafeBytes(of: port.bigEndian) { Array($0) }, toPort: group.port)
                    closeDescriptor(client)
                }
                for (index, socket) in group.sockets.enumerated() where socket >= 0 {
                    for datagram in RawSocket.drainDatagrams(socket) where datagram.count == 2 {
                        found[Int(UInt16(datagram[0]) << 8 | UInt16(datagram[1]))] = index
                    }
                }
            }
            return found
        }
        let before = try placement()
        try group.steering.memberLeaving(group.sockets[3])
        closeDescriptor(group.sockets[3])
        group.sockets[3] = -1
        let after = try placement()
        let moved = ports.filter { before[Int($0)] != nil && before[Int($0)] != after[Int($0)] }.count
        return Report.Remap(policy: policy.description, clients: before.count, moved: moved, fraction: Double(moved) / Double(max(before.count, 1)))
    }

    // MARK: UDP throughput

    /// Datagrams per second one thread sends into a 4-socket group nobody reads (small receive
    /// buffers, so most are dropped after the socket was chosen), for `udpSeconds / 2`.
    func senderPath(_ policy: SteeringPolicy) throws -> Double {
        let group = try BenchGroup(policy: policy, members: 4, udp: true)
        defer { group.close() }
        for fd in group.sockets { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_RCVBUF, value: 4096) }
        let senders = try (0..<256).map { try RawSocket.udp(address: .v4(RawSocket.clientAddress($0)), port: 0, reusePort: false) }
        defer { senders.forEach(closeDescriptor) }
        let batch = DatagramBatch(capacity: 64, slotSize: 64)
        let destination = IPAddress("127.0.0.1")!
        var payload = [UInt8](repeating: 0x5A, count: 64)
        var sent = 0, round = 0
        let end = Date().addingTimeInterval(udpSeconds / 2)
        let began = Date()
        while Date() < end {
            payload.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(round % 256 &* 2_654_435_761).bigEndian, as: UInt64.self) }
            for slot in 0..<64 {
                payload.withUnsafeBytes { batch.setPayload($0, at: slot) }
                batch.setPeer(destination, port: group.port, at: slot)
            }
            batch.count = 64
            if case .done(let count)? = try? batch.send(on: senders[round % 256]) { sent += count }
            round += 1
        }
        return Double(sent) / Date().timeIntervalSince(began)
    }

    /// Datagrams per second received by a 4-socket DatagramGroup (2 loops, recvmmsg) while one thread
    /// sends 64-byte datagrams with sendmmsg from 64 source addresses and ports, for `udpSeconds`.
    func udpThroughput(_ policy: SteeringPolicy, namespace: NetworkNamespace) throws -> Double {
        let loops = try EventLoopGroup(loopCount: 2)
        defer { loops.shutdown() }
        let steering = try SteeringGroup(policy: policy)
        defer { steering.close() }
        let received = ManagedAtomic<Int>(0)
        let group = try namespace.run {
            try DatagramGroup(address: .loopback(port: 0), group: loops, socketCount: 4, steering: steering) { _, batch in
                received.wrappingIncrement(by: batch.count, ordering: .relaxed)
            }
        }
        defer { group.close() }
        let port = group.address.port!
        let seconds = udpSeconds
        return try namespace.run {
            // 256 senders, each from its own address and port, so every policy has 256 flows (and
            // keys) to spread: the comparison is then about the program, not about an uneven split.
            let senders = try (0..<256).map { try RawSocket.udp(address: .v4(RawSocket.clientAddress($0)), port: 0, reusePort: false) }
            defer { senders.forEach(closeDescriptor) }
            let batch = DatagramBatch(capacity: 64, slotSize: 64)
            let destination = IPAddress("127.0.0.1")!
            var payload = [UInt8](repeating: 0x5A, count: 64)
            var sender = 0
            func prepare() {
                // Each sender's batch carries its own session key, so payload keys vary like flows.
                payload.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(sender % 256 &* 2_654_435_761).bigEndian, as: UInt64.self) }
                for slot in 0..<64 {
                    payload.withUnsafeBytes { batch.setPayload($0, at: slot) }
                    batch.setPeer(destination, port: port, at: slot)
                }
                batch.count = 64
            }
            let warmup = Date().addingTimeInterval(0.1)
            while Date() < warmup { prepare(); _ = try? batch.send(on: senders[sender % 256]); sender += 1 }
            let start = received.load(ordering: .relaxed)
            let began = Date()
            let end = began.addingTimeInterval(seconds)
            while Date() < end {
                prepare()
                _ = try? batch.send(on: senders[sender % 256])
                sender += 1
            }
            let elapsed = Date().timeIntervalSince(began)
            return Double(received.load(ordering: .relaxed) - start) / elapsed
        }
    }
}

/// A group of raw sockets on 127.0.0.1 joined to a steering group, for the balance and remap parts.
final class BenchGroup {
    let steering: SteeringGroup
    var sockets: [CInt]
    let port: UInt16

    init(policy: SteeringPolicy, members: Int, udp: Bool) throws {
        steering = try SteeringGroup(policy: policy)
        let first = udp ? try RawSocket.udp(port: 0, reusePort: true, receiveBuffer: 4 << 20) : try RawSocket.reuseportListener(port: 0)
        port = try RawSocket.port(of: first)
        sockets = [first]
        for _ in 1..<members { sockets.append(udp ? try RawSocket.udp(port: port, reusePort: true, receiveBuffer: 4 << 20) : try RawSocket.reuseportListener(port: port)) }
        for fd in sockets { try steering.memberJoined(fd, weight: 1) }
    }

    func close() {
        steering.close()
        for fd in sockets where fd >= 0 { closeDescriptor(fd) }
    }
}

extension RawSocket {
    /// 127.0.x.y for client `i`, in network byte order: distinct for 65,000 clients.
    static func clientAddress(_ i: Int) -> UInt32 { UInt32(0x7f00_0000 | (i / 250) << 8 | (i % 250 + 2)).bigEndian }
}
