import StraitAccel
import StraitKernelABI
import StraitSystem
import StraitTestSupport
import Testing

/// An accelerator enabled on a cgroup of the test's own, pinned under the test's own folder, and
/// disabled and removed when the test ends, pass or fail.
final class AccelFixture: @unchecked Sendable {
    let cgroup: TestCgroup
    let accelerator: Accelerator

    private init(cgroup: TestCgroup, policy: AccelPolicy, calibration: AccelCalibration.Plan?) throws {
        self.cgroup = cgroup
        accelerator = try Accelerator.enable(cgroup: cgroup.cgroup, policy: policy, pinDirectory: cgroup.pinDirectory + "/accel", calibration: calibration)
    }

    /// `calibration` nil (the default) enables without measuring: every bulk size redirects.
    static func with<T>(policy: AccelPolicy = .alwaysRedirect, calibration: AccelCalibration.Plan? = nil, _ body: (AccelFixture) throws -> T) throws -> T {
        try TestCgroup.with { cgroup in
            let fixture = try AccelFixture(cgroup: cgroup, policy: policy, calibration: calibration)
            defer { try? fixture.accelerator.disable() }
            return try body(fixture)
        }
    }

    /// A connected pair whose both ends (listener included) were made inside the cgroup.
    func pair(_ family: TestFamily = .ipv4) throws -> (client: TestSocket, server: TestSocket) {
        try cgroup.inside {
            let listener = try TestListener(family)
            return try listener.connectPair()
        }
    }

    var counters: strait_accel_counters {
        get throws { try accelerator.counters() }
    }
}

extension AccelCalibration.Plan {
    /// A small-write size and a bulk size, four pairs each, 0.4 s of streaming: a test's worth of
    /// traffic, not a measurement worth keeping.
    static func quick(under parent: Cgroup? = nil) -> Self {
        var plan = Self()
        plan.messageSizes = [1024, 262_144]
        plan.pairs = 4
        plan.streamingSeconds = 0.4
        plan.parentCgroup = parent
        return plan
    }
}

extension AccelPolicy {
    /// Every direction redirects from its first send: the mode that exercises the redirect path.
    static var alwaysRedirect: AccelPolicy {
        var policy = AccelPolicy()
        policy.adaptive = false
        return policy
    }
}

/// Sends `count` pattern bytes from `sender` while `receiver` reads and checks them, then closes
/// the sender's write side. Returns what the receiver saw.
func transfer(
    from sender: TestSocket, to receiver: TestSocket, count: Int, chunk: Int, seed: UInt64 = 7, shutdown: Bool = true
) throws -> (count: Int, firstMismatch: Int?) {
    let pattern = PatternStream(seed: seed)
    nonisolated(unsafe) var seen: (count: Int, firstMismatch: Int?) = (0, nil)
    try concurrently([
        {
            try sender.send(pattern, count: count, chunk: chunk)
            if shutdown { try sender.shutdownWrite() }
        },
        { seen = try receiver.receiveAndVerify(pattern, limit: shutdown ? .max : count) },
    ])
    return seen
}

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))
