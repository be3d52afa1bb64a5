import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

/// Where, on this machine, redirecting beats TCP over loopback: one stream per message size, from
/// small writes to bulk, plain and redirected, with both ends on one CPU and, where there are two,
/// on two CPUs.
///
/// Why measure instead of a constant: whether sk_msg's ingress redirect beats loopback TCP depends
/// on the machine (memory bandwidth, caches, how the two ends land on CPUs) and on the kernel's
/// tcp_bpf send path. On one machine kind it wins 2x from 16 KiB up; on another it loses a fifth
/// below 256 KiB; a kernel that corks redirected small writes may win there too.
///
/// How it decides (``DecisionRule``): each size and placement is measured as several interleaved
/// pairs, one plain and one redirected run each, spread over the whole measurement so that a burst
/// of load from elsewhere lands on one pair rather than on one side. A size redirects only if, in
/// every placement, the median of its pairs' ratios (redirected over plain) reaches
/// ``DecisionRule/minimumGain`` and the lower confidence bound of that median beats plain. A
/// machine where redirect loses, or a measurement too noisy to tell, keeps plain TCP's speed; a
/// machine (or later kernel) where it wins clearly takes the gain.
public struct AccelCalibration: Sendable, Codable, Equatable {
    /// The pairs' ratios of one size in one placement: their median and the lower bound of a
    /// one-sided confidence interval for that median.
    public struct RatioSummary: Sendable, Codable, Equatable {
        /// The median of the pairs' ratios (redirected Gbit/s over plain Gbit/s): above 1 means
        /// redirect was faster.
        public var median: Double
        /// The j-th smallest ratio, for the largest j such that the true median lies above it with
        /// at least the asked confidence (a sign test: each ratio falls below the median with
        /// probability 1/2). 0 when there are too few pairs to give that confidence.
        public var lowerBound: Double

        /// A summary as stored (read back from the pinned calibration), taken as given.
        public init(median: Double, lowerBound: Double) {
            self.median = median
            self.lowerBound = lowerBound
        }

        /// Summarizes `ratios` at `confidence` (for example 0.9).
        public init(ratios: [Double], confidence: Double) {
            let sorted = ratios.sorted()
            median = Self.median(of: sorted)
            let rank = Self.lowerBoundRank(count: sorted.count, confidence: confidence)
            lowerBound = rank > 0 ? sorted[rank - 1] : 0
        }

        /// The middle value (mean of the two middle ones for an even count); 0 for none. The
        /// benchmarks have their own (StraitBench), which this shipping target cannot import.
        static func median(of values: [Double]) -> Double {
            guard !values.isEmpty else { return 0 }
            let sorted = values.sorted(), middle = sorted.count / 2
            return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        }

        /// The rank j (1-based, 0 for none) of the lower bound among `count` sorted ratios: the
        /// largest j with P(Binomial(count, 1/2) < j) ≤ 1 - confidence.
        static func lowerBoundRank(count: Int, confidence: Double) -> Int {
            var rank = 0, below = 0.0, choose = 1.0
            let total = pow(2.0, Double(count))
            for j in 0..<count {
                // below = P(B <= j) once C(count, j) is added.
                below += choose / total
                guard below <= 1 - confidence else { break }
                rank = j + 1
                choose = choose * Double(count - j) / Double(j + 1)
            }
            return rank
        }
    }

    /// When a size redirects, from its pairs in every placement.
    public struct DecisionRule: Sendable, Equatable {
        /// The median ratio must reach this: a smaller gain is not worth a path that, on a bad
        /// placement, can lose.
        public var minimumGain = 1.03
        /// Confidence of the lower bound that must beat plain (ratio above 1). 80% makes it the
        /// second smallest of 5 ratios: one pair spoiled by another process's burst (on a loaded
        /// 2-CPU VM a 20 ms run is sometimes not scheduled at all) does not veto a clear gain, while
        /// a size with no gain still passes in only about 1 case in 30 (both placements).
        public var confidence = 0.8

        /// The rule ``AccelCalibration`` ships with: a 3% gain and an 80% lower bound.
        public init() {}

        /// Redirect only if every placement's median reaches ``minimumGain`` and its lower bound
        /// beats plain; no placement measured means no redirect.
        public func redirects(_ placements: [RatioSummary]) -> Bool {
            !placements.isEmpty && placements.allSatisfy { $0.median >= minimumGain && $0.lowerBound > 1 }
        }
    }

    /// One message size: Gbit/s of one stream by CPU placement (index 0 both ends on one CPU,
    /// index 1 on two CPUs; one entry on a one-CPU machine), and the decision taken.
    public struct Point: Sendable, Codable, Equatable {
        /// The size of each send(2) in this point's runs, in bytes.
        public var messageBytes: Int
        /// Medians of the plain and of the redirected runs, per placement.
        public var plainGbitS: [Double]
        /// Gbit/s, per placement, of the runs through sk_msg redirect (same order as `plainGbitS`).
        public var redirectedGbitS: [Double]
        /// The pairs' ratios per placement (what the decision read).
        public var ratios: [RatioSummary]
        /// Sends of this size (down to the previous point's) redirect: bulk sends, and streams of
        /// small writes.
        public var redirects: Bool

        /// `ratios` nil: taken as the ratio of the medians, to the thousandth (as stored).
        public init(messageBytes: Int, plainGbitS: [Double], redirectedGbitS: [Double], ratios: [RatioSummary]? = nil, redirects: Bool) {
            self.messageBytes = messageBytes
            self.plainGbitS = plainGbitS
            self.redirectedGbitS = redirectedGbitS
            self.ratios = ratios ?? zip(redirectedGbitS, plainGbitS).map { redirected, plain in
                let ratio = plain > 0 ? (redirected / plain * 1000).rounded() / 1000 : 0
                return RatioSummary(median: ratio, lowerBound: ratio)
            }
            self.redirects = redirects
        }

        /// Decides from raw samples: `plain[placement][pair]` and `redirected[placement][pair]`,
        /// the two runs of a pair taken one after the other. A pair with a run that moved nothing (a
        /// thread the machine never scheduled in time) says nothing about the path and is left out,
        /// so it can neither give nor veto a redirect; fewer pairs give a lower bound further down.
        public init(messageBytes: Int, plain: [[Double]], redirected: [[Double]], rule: DecisionRule) {
            let valid = zip(plain, redirected).map { plain, redirected in zip(plain, redirected).filter { $0 > 0 && $1 > 0 } }
            let summaries = valid.map { pairs in
                RatioSummary(ratios: pairs.map { $1 / $0 }, confidence: rule.confidence)
            }
            let plain = valid.map { $0.map { $0.0 } }, redirected = valid.map { $0.map { $0.1 } }
            self.init(
                messageBytes: messageBytes, plainGbitS: plain.map(RatioSummary.median(of:)), redirectedGbitS: redirected.map(RatioSummary.median(of:)),
                ratios: summaries, redirects: rule.redirects(summaries))
        }

        /// The median ratio of the placement where redirect did worst.
        public var worstRatio: Double { ratios.map(\.median).min() ?? 0 }
    }

    /// What to measure and how long. The defaults stream for 3.0 s in all and stop starting new
    /// rounds at 4.5 s, set-up included.
    public struct Plan: Sendable, Equatable {
        /// Message sizes measured, ascending; each covers the sizes above the previous one's up to
        /// its own, the first everything below it and the last everything above it (see
        /// ``AccelCalibration/redirectSizeClasses``). Those under the policy's bulk size decide
        /// streams of small writes, the others bulk sends.
        public var messageSizes = [256, 1024, 4096, 16_384, 65_536, 262_144, 1 << 20]
        /// Interleaved plain/redirected pairs per size and placement. With 5, the 80% lower bound
        /// is the second smallest ratio.
        public var pairs = 5
        /// Time all runs stream together, warm-up included, split evenly over sizes × placements ×
        /// pairs × 2 runs, each on a fresh connection.
        public var streamingSeconds = 3.0
        /// The whole calibration's budget, set-up included: no new round of pairs starts after it,
        /// and the sizes decide on the rounds done (fewer pairs give a lower bound further down, or
        /// none, so a cut measurement errs towards the stack). Keeps `enable` within 5 s.
        public var deadlineSeconds = 4.5
        /// Share of each run spent streaming before counting (slow start, first allocations).
        public var warmUpShare = 0.25
        /// How the pairs' ratios become a decision.
        public var rule = DecisionRule()
        /// Where the calibration's own cgroup is made; nil: the root of cgroup v2.
        public var parentCgroup: Cgroup?

        /// The default plan: 7 sizes from 256 B to 1 MiB, 5 pairs, 3.0 s streaming within a 4.5 s
        /// budget.
        public init() {}

        /// Length of one run, warm-up included, with `placements` CPU placements.
        func secondsPerRun(placements: Int) -> Double {
            streamingSeconds / Double(max(1, messageSizes.count * placements * pairs * 2))
        }
    }

    /// When it was measured.
    public var measuredAt: Date
    /// How long the measurement took, setup included.
    public var elapsedSeconds: Double
    /// Pairs per size and placement (0: not recorded).
    public var pairs: Int
    /// One point per measured size, ascending by ``Point/messageBytes``.
    public var points: [Point]

    /// A calibration as measured or read back from its pin; nothing is checked or written.
    public init(measuredAt: Date, elapsedSeconds: Double, pairs: Int = 0, points: [Point]) {
        self.measuredAt = measuredAt
        self.elapsedSeconds = elapsedSeconds
        self.pairs = pairs
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
        ranges(of: sizeClasses, within: max(1, Int(bulkBytes))..<Int.max)
    }

    /// Size ranges of small writes (under `bulkBytes`) whose streams `sizeClasses` keeps redirected.
    public static func redirectedStreamRanges(sizeClasses: UInt32, bulkBytes: UInt32) -> [Range<Int>] {
        ranges(of: sizeClasses, within: 1..<max(1, Int(bulkBytes)))
    }

    /// The sizes inside `bounds` whose class bit is set, as merged ranges.
    static func ranges(of sizeClasses: UInt32, within bounds: Range<Int>) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        for bit in 0..<32 where sizeClasses & (1 << UInt32(bit)) != 0 {
            let lower = max(1 << bit, bounds.lowerBound), upper = min(bit == 31 ? Int.max : 1 << (bit + 1), bounds.upperBound)
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
    /// as cgroup v2 requires), then returns to its own cgroup. Costs the plan's streaming budget
    /// (3.4 s by default) plus set-up, during which two threads stream at full speed.
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
        // The schedule: round by round over every size and placement, so each cell's pairs spread
        // over the whole measurement; within a pair, which side runs first alternates.
        let schedule = (0..<plan.pairs).flatMap { round in
            plan.messageSizes.indices.flatMap { sizeIndex in
                placements.indices.flatMap { placementIndex in
                    ((round + sizeIndex + placementIndex) % 2 == 0 ? [false, true] : [true, false]).map {
                        (size: sizeIndex, placement: placementIndex, redirect: $0)
                    }
                }
            }
        }
        // One fresh connection per run, all made now inside the cgroup; each is closed right after
        // its run, so the buffers it filled are not held while the others run.
        var connections: [LoopbackPair?] = try {
            try cgroup.add()
            defer { try? home.add() }
            return try schedule.map { try ($0.redirect ? inside.redirect : inside.plain).connectPair() }
        }()
        let runSeconds = plan.secondsPerRun(placements: placements.count)
        let warmUp = runSeconds * plan.warmUpShare
        // samples[size][placement]: Gbit/s of each pair's two runs.
        var plain = Array(repeating: Array(repeating: [Double](), count: placements.count), count: plan.messageSizes.count)
        var redirected = plain
        let runsPerRound = plan.messageSizes.count * placements.count * 2
        var rounds = 0
        for (index, run) in schedule.enumerated() {
            if index % runsPerRound == 0 {
                if Date().timeIntervalSince(started) > plan.deadlineSeconds { break }
                rounds += 1
            }
            let placement = placements[run.placement]
            let gbits = try connections[index]!.stream(
                messageBytes: plan.messageSizes[run.size], senderCPU: placement.sender, receiverCPU: placement.receiver,
                warmUp: warmUp, seconds: runSeconds - warmUp)
            connections[index] = nil
            if run.redirect { redirected[run.size][run.placement].append(gbits) } else { plain[run.size][run.placement].append(gbits) }
        }
        let points = plan.messageSizes.enumerated().map { sizeIndex, size in
            AccelCalibration.Point(messageBytes: size, plain: plain[sizeIndex], redirected: redirected[sizeIndex], rule: plan.rule)
        }
        let counters = try calibrator.counters()
        guard counters.redirected_bytes > 0 else {
            throw AccelError.calibrationFailed(
                "the redirected runs were not redirected (\(counters.sockets_tracked) sockets tracked, \(counters.fallback_no_peer_messages) sends found no peer); is another sk_msg program tracking these sockets?")
        }
        return AccelCalibration(measuredAt: Date(), elapsedSeconds: Date().timeIntervalSince(started), pairs: rounds, points: points)
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
            let placements = min(2, max(1, Int(raw.placements)))
            func values(_ pair: (UInt32, UInt32), scale: Double) -> [Double] { [pair.0, pair.1].prefix(placements).map { Double($0) / scale } }
            let ratios = zip(values(point.median_ratio_milli, scale: 1000), values(point.lower_ratio_milli, scale: 1000)).map {
                AccelCalibration.RatioSummary(median: $0, lowerBound: $1)
            }
            return AccelCalibration.Point(
                messageBytes: Int(point.message_bytes), plainGbitS: values(point.plain_mbit_s, scale: 1000),
                redirectedGbitS: values(point.redirected_mbit_s, scale: 1000), ratios: ratios, redirects: point.redirect != 0)
        }
        return AccelCalibration(
            measuredAt: Date(timeIntervalSince1970: Double(raw.measured_at)), elapsedSeconds: Double(raw.elapsed_ms) / 1000, pairs: Int(raw.pairs), points: points)
    }

    /// Writes `calibration` into the pinned `calibration` map (what ``calibration()`` reads and
    /// the policy's calibrated bulk decision uses). The config map changes at the next policy apply.
    func store(_ calibration: AccelCalibration) throws {
        var raw = strait_accel_calibration()
        raw.measured_at = UInt64(max(1, calibration.measuredAt.timeIntervalSince1970))
        raw.elapsed_ms = UInt32(calibration.elapsedSeconds * 1000)
        let points = calibration.points.prefix(Int(STRAIT_ACCEL_CALIBRATION_POINTS))
        raw.points = UInt32(points.count)
        raw.pairs = UInt32(calibration.pairs)
        raw.placements = UInt32(calibration.points.first?.plainGbitS.count ?? 1)
        withUnsafeMutableBytes(of: &raw.point) { bytes in
            let slots = bytes.bindMemory(to: strait_accel_calibration_point.self)
            for (index, point) in points.enumerated() {
                // Thousandths, rounded: Gbit/s to Mbit/s, ratios to milli.
                func milli(_ values: [Double], _ index: Int) -> UInt32 { index < values.count ? UInt32(min((values[index] * 1000).rounded(), 4e9)) : 0 }
                func both(_ values: [Double]) -> (UInt32, UInt32) { (milli(values, 0), milli(values, 1)) }
                slots[index] = strait_accel_calibration_point(
                    message_bytes: UInt32(point.messageBytes), redirect: point.redirects ? 1 : 0,
                    plain_mbit_s: both(point.plainGbitS), redirected_mbit_s: both(point.redirectedGbitS),
                    median_ratio_milli: both(point.ratios.map(\.median)), lower_ratio_milli: both(point.ratios.map(\.lowerBound)))
            }
        }
        try calibrationRecord.update(0, raw)
    }

    /// The size-class mask the calibration in force gives; nil when nothing was measured.
    func calibratedSizeClasses() throws -> UInt32? {
        try calibration()?.redirectSizeClasses
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
            return LoopbackPair(client: client, server: try SocketCall.acceptWaiting(fd))
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
    /// `seconds` after `warmUp`. Blocking calls wake every 10 ms, so a stalled peer cannot hang it;
    /// at the end the receiver shuts the client's sending side, which wakes a sender blocked on a
    /// full buffer at once. The pair is spent afterwards: one run per pair.
    func stream(messageBytes: Int, senderCPU: Int, receiverCPU: Int, warmUp: Double, seconds: Double) throws -> Double {
        var timeout = timeval(tv_sec: 0, tv_usec: 10_000)
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
                // After the receiver stopped, a failed send is only the shutdown that woke it.
                if !lock.withLock({ defer { stopped = true }; return stopped }) { failure = error }
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
                    // A run that a busy machine starved of the CPU counts on until it saw bytes
                    // move, for at most one more length: a zero would say nothing about the path.
                    if now >= end && (counted > 0 || now >= end + UInt64(seconds * 1e9)) { break }
                }
                if let first, last > first { gbits = Double(counted) * 8 / Double(last - first) }
            } catch {
                failure = error
            }
            lock.withLock { stopped = true }
            shutdown(client, Int32(SHUT_WR))
        }
        sender.start()
        receiver.start()
        done.wait()
        done.wait()
        if let failure { throw AccelError.calibrationFailed("\(failure)") }
        return gbits
    }
}
