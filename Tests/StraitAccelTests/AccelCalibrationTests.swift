import Foundation
import StraitKernelABI
import StraitSystem
import StraitTestSupport
import Testing

@testable import StraitAccel

/// The calibration: measured, stored, shown, applied by the kernel program, overridden by hand, and
/// a direction moving from redirect to the stack mid-stream without losing or reordering a byte.
@Suite("accel: calibration decides which bulk sizes redirect", .serialized, kernelGate)
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
            #expect(calibration.points.map(\.messageBytes) == [16_384, 262_144])
            #expect(calibration.points.allSatisfy { $0.plainGbitS.count == (ProcessInfo.processInfo.activeProcessorCount > 1 ? 2 : 1) })
            #expect(calibration.points.allSatisfy { $0.plainGbitS.allSatisfy { $0 > 0 } && $0.redirectedGbitS.allSatisfy { $0 > 0 } }, "every run moved bytes")
            #expect(abs(calibration.measuredAt.timeIntervalSinceNow) < 60)
            #expect(try fixture.accelerator.config.lookup(0)?.redirect_size_classes == calibration.redirectSizeClasses)

            let status = try Accelerator.status(pinDirectory: fixture.accelerator.pinDirectory)
            #expect(status.calibration == calibration)
            #expect(status.redirectedBulkSizes == AccelCalibration.redirectedRanges(sizeClasses: calibration.redirectSizeClasses, bulkBytes: 16_384))
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
    }
}
