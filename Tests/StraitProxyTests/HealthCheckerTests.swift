import Foundation
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The one health checker the proxy and `strait lb` share, on its own loop: what it reports and when.
@Suite("HealthChecker: TCP checks on a StraitNet loop", .serialized)
struct HealthCheckerTests {
    /// Every change the checker reported, in order (written on the loop, read by the test).
    final class Changes: @unchecked Sendable {
        private let lock = NSLock()
        private var seen: [(key: String, up: Bool, down: Set<String>)] = []
        func add(_ change: HealthChecker<String>.Change) { lock.withLock { seen.append((change.target.key, change.up, change.down)) } }
        var all: [(key: String, up: Bool, down: Set<String>)] { lock.withLock { seen } }
    }

    static func waitFor(_ condition: () -> Bool) {
        let deadline = SocketCall.monotonicNanoseconds() + 5_000_000_000
        while !condition() && SocketCall.monotonicNanoseconds() < deadline { usleep(10_000) }
    }

    @Test("a closed port goes down after `fall` failures, a listening one stays up; dropping the down target reports it up")
    func downThenDropped() throws {
        let alive = try TestListener(.ipv4)
        let dying = try TestListener(.ipv4)
        let loopback = IPAddress("127.0.0.1")!
        let group = try EventLoopGroup(loopCount: 1)
        defer { group.shutdown() }
        let changes = Changes()
        let checker = HealthChecker<String>(loop: group.loops[0]) { changes.add($0) }
        defer { checker.stop() }
        let check = HealthCheck(interval: .milliseconds(30), timeout: .milliseconds(200), rise: 1, fall: 2)
        let targets = [
            HealthChecker<String>.Target(key: "alive", address: .ip(loopback, port: alive.port), check: check, group: "test"),
            HealthChecker<String>.Target(key: "dying", address: .ip(loopback, port: dying.port), check: check, group: "test"),
        ]
        dying.socket.close()
        checker.configure(targets)
        Self.waitFor { !changes.all.isEmpty }
        #expect(changes.all.map(\.key) == ["dying"], "only the closed port changes: \(changes.all)")
        #expect(changes.all.first?.up == false && changes.all.first?.down == ["dying"])

        checker.configure([targets[0]])
        Self.waitFor { changes.all.count >= 2 }
        #expect(changes.all.count == 2, "one more change: \(changes.all)")
        #expect(changes.all.last.map { $0.key == "dying" && $0.up && $0.down.isEmpty } == true, "the dropped target counts as up: \(changes.all)")
        // Probes on: the alive listener keeps being connected to, and nothing else changes.
        usleep(150_000)
        #expect(changes.all.count == 2)
    }
}
