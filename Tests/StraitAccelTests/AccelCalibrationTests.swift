import Foundation
import StraitKernelABI
import StraitSystem
import StraitTestSupport
import Testing

@testable import StraitAccel

/// The calibration: measured, stored, shown, applied by the kernel program, overridden by hand, and
/// a direction moving from redirect to the stack mid-stream without losing or reordering a byte.
@Suite("accel: calibration decides which bulk sizes and small-write streams redirect", .serialized, kernelGate)
struct AccelCalibrationTests {
    /// A calibration that found redirect faster only from 256 KiB up (as on the machine issue 12 was
    /// filed from): what the kernel program must then do is deterministic, whatever this machine measures.
    static let redirectFrom256K = AccelCalibration(
        measuredAt: Date(timeIntervalSince1970: 1_790_000_000), elapsedSeconds: 3.2,
        points: [
            .init(messageBytes: 16_384, plainGbitS: [30, 28], redirectedGbitS: [20, 18], redirects: false),
            .init(messageBytes: 65_536, plainGbitS: [32, 30], redirectedGbitS: [25, 26], redirects: false),
            .init(messageBytes: 262_144, plainGbitS: [25, 26], redirectedGbitS: [40, 42], redirects: true),
            .init(messageBytes: 1 << 20, plainGbitS: [24, 25], redirectedGbitS: [41, 40], redirects: true),
        ])

    @Test("a real calibration is stored, put in the config map, and shown by status")
    func measuredAndShown() throws {
        let home = try Cgroup.of()
        try AccelFixture.with(policy: AccelPolicy(), calibration: .quick()) { fixture in
            let calibration = try #require(try fixture.accelerator.calibration(), "enable measured this machine")
            #expect(calibration.points.map(\.messageBytes) == [1024, 262_144])
            #expect(calibration.pairs == 4)
            #expect(calibration.points.allSatisfy { $0.plainGbitS.count == (ProcessInfo.processInfo.activeProcessorCount > 1 ? 2 : 1) })
            #expect(calibration.points.allSatisfy { $0.plainGbitS.allSatisfy { $0 > 0 } && $0.redirectedGbitS.allSatisfy { $0 > 0 } }, "every run moved bytes")
            #expect(abs(calibration.measuredAt.timeIntervalSinceNow) < 60)
            #expect(try fixture.accelerator.config.lookup(0)?.redirect_size_classes == calibration.redirectSizeClasses)
            #expect(try fixture.accelerator.config.lookup(0)?.stream_size_classes == calibration.redirectSizeClasses)
            #expect(calibration.points.allSatisfy { $0.ratios.count == $0.plainGbitS.count && $0.ratios.allSatisfy { $0.lowerBound <= $0.median } })

            let status = try Accelerator.status(pinDirectory: fixture.accelerator.pinDirectory)
            #expect(status.calibration == calibration)
            #expect(status.redirectedBulkSizes == AccelCalibration.redirectedRanges(sizeClasses: calibration.redirectSizeClasses, bulkBytes: 16_384))
            #expect(status.redirectedStreamSizes == AccelCalibration.redirectedStreamRanges(sizeClasses: calibration.redirectSizeClasses, bulkBytes: 16_384))
            #expect(try fixture.counters.sockets_tracked == 0, "the calibration's sockets never entered this accelerator")
            #expect(try Cgroup.of() == home, "the process went back to its own cgroup")
        }
    }

    @Test("the stored calibration decides: bulk below its band goes to the stack, bulk inside it redirects")
    func appliedByTheKernelProgram() throws {
        try AccelFixture.with(policy: AccelPolicy()) { fixture in
            try fixture.accelerator.store(Self.redirectFrom256K)
            try fixture.accelerator.setPolicy(try fixture.accelerator.policy())
            #expect(try fixture.accelerator.redirectedBulkSizes() == [131_072..<Int.max])
            #expect(AccelCalibration.describe(try fixture.accelerator.redirectedBulkSizes()) == "128 KiB and larger")
            #expect(try fixture.accelerator.calibration() == Self.redirectFrom256K)

            let losing = try fixture.pair()
            let small = try transfer(from: losing.client, to: losing.server, count: 8 << 20, chunk: 65_536, shutdown: false)
            #expect(small.count == 8 << 20 && small.firstMismatch == nil)
            let afterLosing = try fixture.counters
            #expect(afterLosing.redirected_bytes < 65_536 * 4, "64 KiB bulk goes to the stack at its first bulk send")
            #expect(afterLosing.fallback_stack_bytes >= 65_536 && afterLosing.sockets_released >= 1, "and the sender left the hash")

            let winning = try fixture.pair()
            let large = try transfer(from: winning.client, to: winning.server, count: 16 << 20, chunk: 262_144, seed: 3, shutdown: false)
            #expect(large.count == 16 << 20 && large.firstMismatch == nil)
            #expect(try fixture.counters.redirected_bytes >= UInt64(8 << 20), "256 KiB bulk redirects")
        }
    }

    @Test("--bulk-bytes overrides the calibration, and enable by hand does not measure")
    func overrideWins() throws {
        var byHand = AccelPolicy()
        byHand.bulkBytes = 16_384
        byHand.bulkDecision = .byHand
        try AccelFixture.with(policy: byHand, calibration: .quick()) { fixture in
            #expect(try fixture.accelerator.calibration() == nil, "a bulk size set by hand needs no measurement")
            try fixture.accelerator.store(Self.redirectFrom256K)
            try fixture.accelerator.setPolicy(try fixture.accelerator.policy())
            #expect(try fixture.accelerator.policy().bulkDecision == .byHand)
            #expect(try fixture.accelerator.redirectedBulkSizes() == [16_384..<Int.max], "by hand: every bulk size redirects")
            #expect(try fixture.accelerator.redirectedStreamSizes().isEmpty, "by hand: small-write streams go to the stack")
            let status = try Accelerator.status(pinDirectory: fixture.accelerator.pinDirectory)
            #expect(status.policy?.bulkDecision == .byHand && status.calibration == Self.redirectFrom256K)

            let pair = try fixture.pair()
            let result = try transfer(from: pair.client, to: pair.server, count: 8 << 20, chunk: 65_536, shutdown: false)
            #expect(result.count == 8 << 20 && result.firstMismatch == nil)
            #expect(try fixture.counters.redirected_bytes >= UInt64(8 << 20) - 65_536 * 40, "64 KiB redirects though the calibration says stack")

            var calibrated = try fixture.accelerator.policy()
            calibrated.bulkDecision = .calibrated
            try fixture.accelerator.setPolicy(calibrated)
            #expect(try fixture.accelerator.redirectedBulkSizes() == [131_072..<Int.max], "back to the calibration")
        }
    }

    @Test("a settled redirecting direction moves to the stack mid-stream, losing and reordering nothing")
    func redirectToStackMidStream() throws {
        try AccelFixture.with(policy: AccelPolicy()) { fixture in
            try fixture.accelerator.store(Self.redirectFrom256K)
            try fixture.accelerator.setPolicy(try fixture.accelerator.policy())
            let (client, server) = try fixture.pair()
            for round in 0..<8 {  // request/response: both directions settle on redirect
                try client.sendAll(Array(repeating: UInt8(round), count: 64))
                #expect(try server.receive(exactly: 64) == Array(repeating: UInt8(round), count: 64))
                try server.sendAll(Array(repeating: UInt8(round + 1), count: 64))
                #expect(try client.receive(exactly: 64) == Array(repeating: UInt8(round + 1), count: 64))
            }
            let settled = try fixture.counters
            #expect(settled.fallback_stack_messages == 0, "still redirecting")

            // Small writes (redirected, left unread in the ingress queue), then 64 KiB bulk, which the
            // calibration puts on the stack: the receiver must read the queued bytes first.
            let pattern = PatternStream(seed: 41)
            let queued = 50 * 1000, bulk = 8 << 20
            try pattern.forEachChunk(count: queued, chunk: 1000) { try client.sendAll($0) }
            nonisolated(unsafe) var seen: (count: Int, firstMismatch: Int?) = (0, nil)
            try concurrently([
                {
                    try pattern.forEachChunk(from: queued, count: bulk, chunk: 65_536) { try client.sendAll($0) }
                    try client.shutdownWrite()
                },
                {
                    usleep(50_000)  // let stack bytes arrive behind the queued redirected ones
                    seen = try server.receiveAndVerify(pattern)
                },
            ])
            #expect(seen.count == queued + bulk, "no byte lost")
            #expect(seen.firstMismatch == nil, "no byte reordered")
            let after = try fixture.counters
            #expect(after.redirected_bytes - settled.redirected_bytes >= UInt64(queued), "the small writes were redirected")
            #expect(after.fallback_stack_bytes >= UInt64(bulk) - 65_536, "the bulk went on the stack")
        }
    }

    @Test("calibrating under the running accelerator's cgroup leaves its sockets and counters alone")
    func recalibrationLeavesRunningAcceleratorAlone() throws {
        try AccelFixture.with(policy: AccelPolicy()) { fixture in
            let (client, server) = try fixture.pair()
            let before = try transfer(from: client, to: server, count: 4 << 20, chunk: 65_536, shutdown: false)
            #expect(before.count == 4 << 20 && before.firstMismatch == nil)
            let counters = try fixture.counters
            let tracked = try fixture.accelerator.trackedSockets().count

            // The calibration's cgroup is a child of the accelerated one: without the bypass, this
            // accelerator's sock_ops would see every calibration socket.
            let result = try fixture.accelerator.calibrate(plan: .quick(under: fixture.cgroup.cgroup))
            #expect(try fixture.accelerator.calibration() == result)
            #expect(try fixture.accelerator.config.lookup(0)?.redirect_size_classes == result.redirectSizeClasses)
            let after = try fixture.counters
            #expect(after.sockets_tracked == counters.sockets_tracked, "no calibration socket entered the running accelerator")
            #expect(after.sockets_skipped_policy == counters.sockets_skipped_policy)
            #expect(try fixture.accelerator.trackedSockets().count == tracked)
            #expect(try fixture.accelerator.bypassPorts.keys().isEmpty, "the bypass entries are gone")

            let again = try transfer(from: client, to: server, count: 4 << 20, chunk: 65_536, seed: 5, shutdown: false)
            #expect(again.count == 4 << 20 && again.firstMismatch == nil, "the accelerated pair carries on byte-exact")
        }
    }

    /// Streams of 1 KiB writes measured faster redirected, 256 B and 4 KiB not; bulk as above.
    static let streamsOf1K = AccelCalibration(
        measuredAt: Date(timeIntervalSince1970: 1_790_000_000), elapsedSeconds: 3.8, pairs: 5,
        points: [
            .init(messageBytes: 256, plainGbitS: [2, 2], redirectedGbitS: [1, 1], redirects: false),
            .init(messageBytes: 1024, plainGbitS: [4, 4], redirectedGbitS: [6, 6], redirects: true),
            .init(messageBytes: 4096, plainGbitS: [8, 8], redirectedGbitS: [8, 8], redirects: false),
        ] + redirectFrom256K.points)

    @Test("the small-write decision is stored, shown and obeyed: a measured-faster size keeps streaming redirected, the others go to the stack")
    func smallWriteStreamsFollowTheCalibration() throws {
        try AccelFixture.with(policy: AccelPolicy()) { fixture in
            try fixture.accelerator.store(Self.streamsOf1K)
            try fixture.accelerator.setPolicy(try fixture.accelerator.policy())
            #expect(try fixture.accelerator.calibration() == Self.streamsOf1K)
            // The calibration's one mask; below 16 KiB the 1 KiB point covers 512 B–2 KiB (classes 9 and 10).
            #expect(try fixture.accelerator.config.lookup(0)?.stream_size_classes == Self.streamsOf1K.redirectSizeClasses)
            #expect(Self.streamsOf1K.redirectSizeClasses & 0x3fff == 0b11 << 9)
            #expect(try fixture.accelerator.redirectedStreamSizes() == [512..<2048])
            let status = try Accelerator.status(pinDirectory: fixture.accelerator.pinDirectory)
            #expect(status.redirectedStreamSizes == [512..<2048] && status.calibration == Self.streamsOf1K)

            let probe = Int(AccelPolicy().probeSends) + 1
            let kept = try fixture.pair()
            let before = try fixture.counters
            let streamed = try transfer(from: kept.client, to: kept.server, count: 4000 * 1000, chunk: 1000, shutdown: false)
            #expect(streamed.count == 4000 * 1000 && streamed.firstMismatch == nil)
            let afterKept = try fixture.counters
            #expect(afterKept.redirected_bytes - before.redirected_bytes == 4000 * 1000, "every 1000 B write redirected, past the probe too")
            #expect(afterKept.fallback_stack_messages == before.fallback_stack_messages && afterKept.sockets_released == before.sockets_released)

            let moved = try fixture.pair()
            let small = try transfer(from: moved.client, to: moved.server, count: 4000 * 200, chunk: 200, seed: 9, shutdown: false)
            #expect(small.count == 4000 * 200 && small.firstMismatch == nil)
            let afterMoved = try fixture.counters
            #expect(afterMoved.redirected_bytes - afterKept.redirected_bytes <= UInt64(probe * 200), "200 B writes redirect only while probing")
            #expect(afterMoved.fallback_stack_messages > afterKept.fallback_stack_messages, "then take the stack")
            #expect(afterMoved.sockets_released > afterKept.sockets_released, "and the sender leaves the hash (its sends are no longer counted)")
        }
    }

    @Test("decision rule: median and lower bound from interleaved pairs, on synthetic samples")
    func decisionRuleArithmetic() {
        // Sign-test ranks at 90%: 3 pairs cannot give it, 4–6 give the smallest, 7–8 the second smallest;
        // at 80% (the rule's default) 2 pairs cannot, 3–4 give the smallest, 5–6 the second smallest.
        #expect([3, 4, 5, 6, 7, 8].map { AccelCalibration.RatioSummary.lowerBoundRank(count: $0, confidence: 0.9) } == [0, 1, 1, 1, 2, 2])
        #expect([2, 3, 4, 5, 6].map { AccelCalibration.RatioSummary.lowerBoundRank(count: $0, confidence: 0.8) } == [0, 1, 1, 2, 2])
        #expect(AccelCalibration.RatioSummary(ratios: [1.4, 0.9, 1.2, 1.1, 1.3], confidence: 0.9) == .init(median: 1.2, lowerBound: 0.9))
        #expect(AccelCalibration.RatioSummary(ratios: [1.4, 0.9, 1.2, 1.1, 1.3], confidence: 0.8) == .init(median: 1.2, lowerBound: 1.1))

        let rule = AccelCalibration.DecisionRule()
        func point(_ plain: [[Double]], _ redirected: [[Double]]) -> AccelCalibration.Point {
            AccelCalibration.Point(messageBytes: 65_536, plain: plain, redirected: redirected, rule: rule)
        }
        let clear = point([[10, 12, 11, 10, 9], [20, 21, 19, 22, 20]], [[20, 25, 21, 19, 18], [30, 33, 29, 31, 30]])
        #expect(clear.redirects && clear.plainGbitS == [10, 20] && clear.redirectedGbitS == [20, 30])
        #expect(clear.ratios[0].median == 2 && abs(clear.worstRatio - 1.5) < 1e-9)
        // One pair where redirect lost (a run starved by another process) does not veto; two do.
        #expect(point([[10, 10, 10, 10, 10]], [[15, 15, 9, 15, 15]]).redirects)
        #expect(!point([[10, 10, 10, 10, 10]], [[15, 15, 9, 15, 8]]).redirects)
        // Consistently ahead but by less than the minimum gain.
        #expect(!point([[10, 10, 10, 10, 10]], [[10.2, 10.1, 10.25, 10.15, 10.2]]).redirects)
        // Wins on one CPU, loses on two: the program cannot tell placements apart, so stack.
        #expect(!point([[10, 10, 10, 10, 10], [20, 20, 20, 20, 20]], [[20, 20, 20, 20, 20], [15, 15, 15, 15, 15]]).redirects)
        // A pair with a run that moved nothing is left out: the other four decide (smallest ratio, 2x).
        let starved = point([[10, 0, 10, 10, 10]], [[20, 20, 20, 20, 20]])
        #expect(starved.redirects && starved.ratios[0] == .init(median: 2, lowerBound: 2))
        // Two pairs (a measurement cut at its deadline) cannot give 80% confidence: stack, however large the gain.
        #expect(!point([[10, 10]], [[30, 30]]).redirects)
        // A plain run hit by someone else's build (one pair at 6x) moves the median by one rank only.
        let outlier = point([[10, 10, 10, 2, 10]], [[9, 9.5, 9, 12, 9.8]])
        #expect(!outlier.redirects && outlier.ratios[0].median == 0.95)
    }

    @Test("decision rule on noisy synthetic machines: a clear gain redirects, no gain rarely does")
    func decisionRuleUnderNoise() {
        // Every run is its true speed times noise, uniform in ±25%; a seeded generator keeps it exact.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func noise() -> Double {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return 0.75 + 0.5 * Double(state >> 11) / Double(1 << 53)
        }
        func redirectShare(trueRatio: Double, trials: Int = 2000) -> Double {
            let rule = AccelCalibration.DecisionRule()
            let taken = (0..<trials).filter { _ in
                let plain = (0..<2).map { _ in (0..<5).map { _ in 10 * noise() } }
                let redirected = (0..<2).map { _ in (0..<5).map { _ in 10 * trueRatio * noise() } }
                return AccelCalibration.Point(messageBytes: 1, plain: plain, redirected: redirected, rule: rule).redirects
            }.count
            return Double(taken) / Double(trials)
        }
        #expect(redirectShare(trueRatio: 2.5) == 1, "a 2.5x gain (64 KiB on this machine kind) always redirects")
        #expect(redirectShare(trueRatio: 1.0) < 0.05, "no gain: plain wins the draw")
        #expect(redirectShare(trueRatio: 0.8) == 0, "a loss never redirects")
    }

    @Test("size classes: each point covers the sizes above the previous point's up to its own")
    func sizeClassMask() {
        #expect(Self.redirectFrom256K.redirectSizeClasses == ~UInt32(0) << 17)
        #expect(AccelCalibration.redirectedRanges(sizeClasses: ~UInt32(0) << 17, bulkBytes: 16_384) == [131_072..<Int.max])
        let middle = AccelCalibration(measuredAt: Date(), elapsedSeconds: 1, points: [
            .init(messageBytes: 16_384, plainGbitS: [1], redirectedGbitS: [2], redirects: true),
            .init(messageBytes: 262_144, plainGbitS: [1], redirectedGbitS: [2], redirects: true),
            .init(messageBytes: 1 << 20, plainGbitS: [2], redirectedGbitS: [1], redirects: false),
        ])
        #expect(AccelCalibration.redirectedRanges(sizeClasses: middle.redirectSizeClasses, bulkBytes: 16_384) == [16_384..<(512 << 10)])
        #expect(AccelCalibration.describe([16_384..<(512 << 10)]) == "16 KiB–512 KiB")
        #expect(AccelCalibration.Point(messageBytes: 1, plainGbitS: [10, 20], redirectedGbitS: [15, 18], redirects: false).worstRatio == 0.9)
        #expect(AccelCalibration.redirectedStreamRanges(sizeClasses: Self.streamsOf1K.redirectSizeClasses, bulkBytes: 16_384) == [512..<2048])
        #expect(AccelCalibration.redirectedRanges(sizeClasses: Self.streamsOf1K.redirectSizeClasses, bulkBytes: 16_384) == [131_072..<Int.max])
    }
}
