import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

/// Where, on this machine, redirecting bulk sends beats TCP over loopback: one stream per message
/// size, plain and redirected, with both ends on one CPU and, where there are two, on two CPUs.
///
/// Why measure instead of a constant: whether sk_msg's ingress redirect beats loopback TCP for bulk
/// depends on the machine (memory bandwidth, caches, how the two ends land on CPUs) and on the
/// kernel's tcp_bpf send path. On one machine kind it wins 2x from 16 KiB up; on another it loses a
/// fifth below 256 KiB. A size redirects only if, in every placement measured, its slower
/// redirected run beat the faster plain run by ``AccelCalibration/Plan/minimumGain``, so a machine
/// where it loses (or a measurement too noisy to tell) keeps plain TCP's speed and a machine (or
/// later kernel) where it wins takes the gain.
public struct AccelCalibration: Sendable, Codable, Equatable {
    /// One message size: Gbit/s of one stream by CPU placement (index 0 both ends on one CPU,
    /// index 1 on two CPUs; one entry on a one-CPU machine), and the decision taken.
    public struct Point: Sendable, Codable, Equatable {
        public var messageBytes: Int
        public var plainGbitS: [Double]
        public var redirectedGbitS: [Double]
        /// Bulk sends of this size (up to the next point's size) redirect.
        public var redirects: Bool

        /// Redirected over plain (means of the two runs each) in the placement where redirect did worst.
        public var worstRatio: Double {
            zip(redirectedGbitS, plainGbitS).map { $1 > 0 ? $0 / $1 : 0 }.min() ?? 0
        }
    }

    /// What to measure and how long. The defaults take about 3.5 s on a two-CPU machine.
    public struct Plan: Sendable, Equatable {
        /// Message sizes measured, ascending; each covers the sizes above the previous one's up to
        /// its own, and the last everything above it too (see ``AccelCalibration/redirectSizeClasses``).
        public var messageSizes = [16_384, 65_536, 262_144, 1 << 20]
        /// Measured time of one run. Each size and placement runs plain, redirected, redirected,
        /// plain (drift touches both alike), each on a fresh connection.
        public var secondsPerRun = 0.08
        /// Time each run streams before it starts counting (slow start, first allocations).
        public var warmUpSeconds = 0.02
        /// Redirect's slower run must be at least this much faster than plain's faster run, in
        /// every placement, to be taken: a smaller win is within the noise of runs this short.
        public var minimumGain = 1.05
        /// Where the calibration's own cgroup is made; nil: the root of cgroup v2.
        public var parentCgroup: Cgroup?

        public init() {}
    }

    /// When it was measured.
    public var measuredAt: Date
    /// How long the measurement took, setup included.
    public var elapsedSeconds: Double
    public var points: [Point]

    public init(measuredAt: Date, elapsedSeconds: Double, points: [Point]) {
        self.measuredAt = measuredAt
        self.elapsedSeconds = elapsedSeconds
        self.points = points
    }

    /// The config map's `redirect_size_classes`: bit k set when bulk sends of 2^k to 2^(k+1) - 1
    /// bytes redirect. A point decides for the classes above the previous point's up to its own
    /// (the first from 0, the last up to 31): sk_msg sees a write as messages of at most 17
    /// scatterlist entries, so a 1 MiB write arrives as two messages of about 512 KiB, and the
    /// 1 MiB point must decide for them.
    public var redirectSizeClasses: UInt32 {
        var mask: UInt32 = 0
        for (index, point) in points.enumerated() where point.redirects {
            let low = index == 0 ? 0 : Self.sizeClass(points[index - 1].messageBytes) + 1
            let high = index + 1 < points.count ? Self.sizeClass(point.messageBytes) : 31
            guard low <= high else { continue }
            for bit in low...high { mask |= 1 << UInt32(bit) }
        }
        return mask
    }

    /// floor(log2(bytes)), as the sk_msg program computes it.
    static func sizeClass(_ bytes: Int) -> Int { bytes <= 1 ? 0 : Int.bitWidth - 1 - bytes.leadingZeroBitCount }

    /// Size ranges of bulk sends (at least `bulkBytes`) that `sizeClasses` redirects, e.g.
    /// `[16384..<262144]`; an upper bound of `Int.max` means "and larger".
    public static func redirectedRanges(sizeClasses: UInt32, bulkBytes: UInt32) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        for bit in 0..<32 where sizeClasses & (1 << UInt32(bit)) != 0 {
            let lower = max(1 << bit, Int(bulkBytes)), upper = bit == 31 ? Int.max : 1 << (bit + 1)
            guard lower < upper else { continue }
            if let last = ranges.last, last.upperBound == lower {
                ranges[ranges.count - 1] = last.lowerBound..<upper
            } else {
                ranges.append(lower..<upper)
            }
        }
        return ranges
    }

    /// `16 KiB–256 KiB, 1 MiB and larger`, or `none`.
    public static func describe(_ ranges: [Range<Int>]) -> String {
        guard !ranges.isEmpty else { return "none" }
        return ranges.map { range in
            range.upperBound == Int.max ? "\(formatBytes(range.lowerBound)) and larger" : "\(formatBytes(range.lowerBound))–\(formatBytes(range.upperBound))"
        }.joined(separator: ", ")
    }
}

extension Accelerator {
    /// Measures ``AccelCalibration`` on this machine, over loopback, in a cgroup and pin folder of
    /// its own (`strait-calibrate-PID` under the cgroup v2 root, or the plan's parent, and under
    /// bpffs), which it removes before returning, also on failure. A second accelerator, always
    /// redirecting, is enabled on that cgroup for the redirected runs.
    ///
    /// `running`, when given, is an accelerator already enabled (possibly on an ancestor cgroup,
    /// such as the root): the calibration's ports go into its `bypass_ports` map while it runs, so
    /// it never tracks the calibration's sockets and its own sockets are not touched.
    ///
    /// The process joins the private cgroup only while it creates the sockets (a whole-process move,
    /// as cgroup v2 requires), then returns to its own cgroup. Costs about 3.5 s with the default
    /// plan on two CPUs, during which two threads stream at full speed.
    public static func measureCalibration(plan: AccelCalibration.Plan = .init(), bypassing running: Accelerator? = nil) throws -> AccelCalibration {
        let started = Date()
        let name = "strait-calibrate-\(getpid())"
        try BPFFS.ensureMounted()
        let home = try Cgroup.of()
        let cgroup = try (plan.parentCgroup ?? Cgroup.root()).makeChild(named: name)
        let pins = BPFFS.defaultMount + "/" + name
        defer {
            for pid in cgroup.processes() { try? home.add(process: pid) }
            try? BPFFS.removeTree(pins)
            for _ in 0..<50 where cgroup.exists {
                if (try? cgroup.remove()) != nil { break }
                usleep(10_000)
            }
        }
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        let placements = cpus > 1 ? [(sender: 0, receiver: 0), (sender: 0, receiver: 1)] : [(sender: 0, receiver: 0)]
        let runsPerCell = 4
        // Listeners and every connection are made now, inside the cgroup (an accepted socket belongs
        // to its listener's cgroup); the runs below need no further move.
        try cgroup.add()
        let inside: (plain: LoopbackListener, redirect: LoopbackListener)
        do {
            defer { try? home.add() }
            inside = (try LoopbackListener(), try LoopbackListener())
        }
        let ports = [inside.plain.port, inside.redirect.port]
        if let running {
            for port in ports { try running.bypassPorts.update(port, 1) }
        }
        defer {
            if let running { for port in ports { _ = try? running.bypassPorts.delete(port) } }
        }
        var policy = AccelPolicy()
        policy.adaptive = false
        policy.ports = [inside.redirect.port]
        let calibrator = try enable(cgroup: cgroup, policy: policy, pinDirectory: pins + "/accel", calibration: nil)
        defer { try? calibrator.disable() }
        let connections: [[[LoopbackPair]]] = try {
            try cgroup.add()
            defer { try? home.add() }
            return try plan.messageSizes.map { _ in
                try placements.map { _ in
                    try (0..<runsPerCell).map { run in try (run == 0 || run == 3 ? inside.plain : inside.redirect).connectPair() }
                }
            }
        }()
        var points: [AccelCalibration.Point] = []
        for (sizeIndex, size) in plan.messageSizes.enumerated() {
            var plain: [Double] = [], redirected: [Double] = []
            var winsEverywhere = true
            for (placementIndex, placement) in placements.enumerated() {
                var runs = (plain: [Double](), redirected: [Double]())
                for (run, pair) in connections[sizeIndex][placementIndex].enumerated() {
                    let gbits = try pair.stream(
                        messageBytes: size, senderCPU: placement.sender, receiverCPU: placement.receiver,
                        warmUp: plan.warmUpSeconds, seconds: plan.secondsPerRun)
                    if run == 0 || run == 3 { runs.plain.append(gbits) } else { runs.redirected.append(gbits) }
                }
                plain.append(runs.plain.reduce(0, +) / Double(runs.plain.count))
                redirected.append(runs.redirected.reduce(0, +) / Double(runs.redirected.count))
                // The slower redirected run must beat the faster plain one: a noisy machine then
                // errs towards the stack, which is never slower than plain.
                winsEverywhere = winsEverywhere && runs.redirected.min()! >= plan.minimumGain * runs.plain.max()!
            }
            points.append(AccelCalibration.Point(messageBytes: size, plainGbitS: plain, redirectedGbitS: redirected, redirects: winsEverywhere))
        }
        let counters = try calibrator.counters()
        guard counters.redirected_bytes > 0 else {
            throw AccelError.calibrationFailed(
                "the redirected runs were not redirected (\(counters.sockets_tracked) sockets tracked, \(counters.fallback_no_peer_messages) sends found no peer); is another sk_msg program tracking these sockets?")
        }
        return AccelCalibration(measuredAt: Date(), elapsedSeconds: Date().timeIntervalSince(started), points: points)
    }

    /// Measures again (``measureCalibration(plan:bypassing:)``, with this accelerator's sockets left
    /// alone), puts the result in force and returns it as stored. New directions follow it at once,
    /// unless the bulk decision is by hand (``AccelPolicy/BulkDecision/byHand``), which keeps
    /// overriding it.
    @discardableResult
    public func calibrate(plan: AccelCalibration.Plan = .init()) throws -> AccelCalibration {
        let result = try Self.measureCalibration(plan: plan, bypassing: self)
        try store(result)
        try setPolicy(try policy())
        // As stored (Mbit/s, whole seconds): what `status` shows.
        return try calibration() ?? result
    }

    /// The calibration in force, or nil when none was measured (enabled with `--no-calibrate`).
    public func calibration() throws -> AccelCalibration? {
        guard let raw = try calibrationRecord.lookup(0), raw.measured_at > 0 else { return nil }
        let points = withUnsafeBytes(of: raw.point) { bytes in
            Array(bytes.bindMemory(to: strait_accel_calibration_point.self).prefix(Int(raw.points)))
        }.map { point in
            let placements = point.plain_mbit_s.1 == 0 && point.redirected_mbit_s.1 == 0 ? 1 : 2
            let plain = [point.plain_mbit_s.0, point.plain_mbit_s.1].prefix(placements).map { Double($0) / 1000 }
            let redirected = [point.redirected_mbit_s.0, point.redirected_mbit_s.1].prefix(placements).map { Double($0) / 1000 }
            return AccelCalibration.Point(messageBytes: Int(point.message_bytes), plainGbitS: plain, redirectedGbitS: redirected, redirects: point.redirect != 0)
        }
        return AccelCalibration(measuredAt: Date(timeIntervalSince1970: Double(raw.measured_at)), elapsedSeconds: Double(raw.elapsed_ms) / 1000, points: points)
    }

    /// Writes `calibration` into the pinned `calibration` map (what ``calibration()`` reads and
    /// the policy's calibrated bulk decision uses). The config map changes at the next policy apply.
    func store(_ calibration: AccelCalibration) throws {
        var raw = strait_accel_calibration()
        raw.measured_at = UInt64(max(1, calibration.measuredAt.timeIntervalSince1970))
        raw.elapsed_ms = UInt32(calibration.elapsedSeconds * 1000)
        let points = calibration.points.prefix(Int(STRAIT_ACCEL_CALIBRATION_POINTS))
        raw.points = UInt32(points.count)
        withUnsafeMutableBytes(of: &raw.point) { bytes in
            let slots = bytes.bindMemory(to: strait_accel_calibration_point.self)
            for (index, point) in points.enumerated() {
                func mbit(_ values: [Double], _ index: Int) -> UInt32 { index < values.count ? UInt32(min(values[index] * 1000, 4e9)) : 0 }
                slots[index] = strait_accel_calibration_point(
                    message_bytes: UInt32(point.messageBytes), redirect: point.redirects ? 1 : 0,
                    plain_mbit_s: (mbit(point.plainGbitS, 0), mbit(point.plainGbitS, 1)),
                    redirected_mbit_s: (mbit(point.redirectedGbitS, 0), mbit(point.redirectedGbitS, 1)))
            }
        }
        try calibrationRecord.update(0, raw)
    }

    /// The size-class mask the calibration in force gives; every class when nothing was measured.
    func calibratedSizeClasses() throws -> UInt32 {
        try calibration()?.redirectSizeClasses ?? .max
    }
}

/// A blocking TCP listener on 127.0.0.1 (port chosen by the kernel) for the calibration's
/// connections. Owns its descriptor and closes it when released.
final class LoopbackListener {
    let fd: CInt
    let port: UInt16

    init() throws {
        let fd = try SocketCall.socket(domain: AF_INET, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
        do {
            try SocketCall.bind(fd, to: .loopback(port: 0))
            try SocketCall.listen(fd, backlog: 64)
            port = try SocketCall.localAddress(of: fd).port ?? 0
        } catch {
            closeDescriptor(fd)
            throw error
        }
        self.fd = fd
    }

    deinit { closeDescriptor(fd) }

    /// Connects a client to this listener and accepts it; both sockets belong to the cgroup of the
    /// calling process (the listener's, for the accepted one).
    func connectPair() throws -> LoopbackPair {
        let client = try SocketCall.socket(domain: AF_INET, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
        do {
            try SocketCall.connect(client, to: .loopback(port: port))
            // Loopback connects complete at once: the connection is queued before connect returns.
            guard case .done(let server) = try SocketCall.accept(fd, nonBlocking: false) else { throw SystemCallError("accept4", .wouldBlock) }
            return LoopbackPair(client: client, server: server)
        } catch {
            closeDescriptor(client)
            throw error
        }
    }
}

/// A connected loopback pair; closes both ends when released.
final class LoopbackPair: @unchecked Sendable {
    let client: CInt
    let server: CInt
    private let lock = NSLock()
    private var stopped = false

    init(client: CInt, server: CInt) {
        self.client = client
        self.server = server
    }

    deinit {
        closeDescriptor(client)
        closeDescriptor(server)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    /// Streams `messageBytes` writes from client to server, the sender thread on `senderCPU` and
    /// the receiver thread on `receiverCPU`, and returns the Gbit/s the receiver read during
    /// `seconds` after `warmUp`. Blocking calls wake every 50 ms, so a stalled peer cannot hang it.
    func stream(messageBytes: Int, senderCPU: Int, receiverCPU: Int, warmUp: Double, seconds: Double) throws -> Double {
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        for (fd, option) in [(client, SO_SNDTIMEO), (server, SO_RCVTIMEO)] {
            try systemCall("setsockopt(SO_SNDTIMEO/SO_RCVTIMEO)") { setsockopt(fd, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size)) }
        }
        nonisolated(unsafe) var failure: Error?
        nonisolated(unsafe) var gbits = 0.0
        let done = DispatchSemaphore(value: 0)
        let sender = Thread { [self] in
            defer { done.signal() }
            let buffer = [UInt8](repeating: 0x5a, count: messageBytes)
            do {
                try SocketCall.pinCurrentThread(toCPU: senderCPU)
                while !isStopped {
                    // A timeout (would block) only rechecks whether to stop.
                    _ = try buffer.withUnsafeBytes { bytes in try nonBlockingCall("send") { send(client, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) } }
                }
            } catch {
                lock.withLock { stopped = true }
                failure = error
            }
        }
        let receiver = Thread { [self] in
            defer { done.signal() }
            let capacity = 1 << 20
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
            defer { buffer.deallocate() }
            do {
                try SocketCall.pinCurrentThread(toCPU: receiverCPU)
                let begin = SocketCall.monotonicNanoseconds()
                let countFrom = begin + UInt64(warmUp * 1e9), end = countFrom + UInt64(seconds * 1e9)
                var first: UInt64?, last = countFrom, counted = 0
                while !isStopped {
                    var got = 0
                    if case .done(let count) = try nonBlockingCall("recv", { recv(server, buffer, capacity, 0) }) {
                        guard count > 0 else { throw AccelError.calibrationFailed("the sender closed its connection early") }
                        got = count
                    }
                    let now = SocketCall.monotonicNanoseconds()
                    if now >= countFrom {
                        if first == nil { first = now } else if got > 0 { counted += got }
                        last = now
                    }
                    if now >= end { break }
                }
                if let first, last > first { gbits = Double(counted) * 8 / Double(last - first) }
            } catch {
                failure = error
            }
            lock.withLock { stopped = true }
        }
        sender.start()
        receiver.start()
        done.wait()
        done.wait()
        if let failure { throw AccelError.calibrationFailed("\(failure)") }
        return gbits
    }
}
