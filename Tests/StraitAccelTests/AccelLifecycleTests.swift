import CLibBPF
import Foundation
import StraitAccel
import StraitBPF
import StraitSystem
import StraitTestSupport
import Testing

@Suite("accel: enable, policy, trace, disable", .serialized, kernelGate)
struct AccelLifecycleTests {
    @Test("enable is idempotent, and refuses a second cgroup")
    func idempotentEnable() throws {
        try AccelFixture.with { fixture in
            let directory = fixture.accelerator.pinDirectory
            var policy = AccelPolicy()
            policy.ports = [5201]
            let again = try Accelerator.enable(cgroup: fixture.cgroup.cgroup, policy: policy, pinDirectory: directory)
            #expect(try again.policy().ports == [5201], "a second enable applies the new policy")
            #expect(try fixture.cgroup.cgroup.attachedProgramIDs().count == 1, "and attaches nothing twice")
            #expect(try again.cgroup()?.path == fixture.cgroup.cgroup.path)
            let other = try Cgroup.root().makeChild(named: uniqueTestName())
            defer { try? other.remove() }
            #expect(throws: AccelError.self) { try Accelerator.enable(cgroup: other, pinDirectory: directory) }
        }
    }

    @Test("the port policy decides which sockets enter, and changes without a reload")
    func portPolicy() throws {
        var policy = AccelPolicy.alwaysRedirect
        policy.ports = [9]  // nothing listens there
        try AccelFixture.with(policy: policy) { fixture in
            let programsBefore = try fixture.cgroup.cgroup.attachedProgramIDs()
            let skipped = try fixture.pair()
            _ = try transfer(from: skipped.client, to: skipped.server, count: 100_000, chunk: 1000, shutdown: false)
            var counters = try fixture.counters
            #expect(counters.sockets_skipped_policy == 2 && counters.sockets_tracked == 0)

            let listener = try fixture.cgroup.inside { try TestListener(.ipv4) }
            policy.ports = [listener.port]
            try fixture.accelerator.setPolicy(policy)
            let tracked = try fixture.cgroup.inside { try listener.connectPair() }
            let result = try transfer(from: tracked.client, to: tracked.server, count: 100_000, chunk: 1000, shutdown: false)
            #expect(result.count == 100_000 && result.firstMismatch == nil)
            counters = try fixture.counters
            #expect(counters.sockets_tracked == 2)
            #expect(counters.redirected_messages > 0)
            #expect(try fixture.cgroup.cgroup.attachedProgramIDs() == programsBefore, "the same program stayed attached")
        }
    }

    @Test("the CIDR policy matches IPv4 as mapped addresses and IPv6 as is")
    func cidrPolicy() throws {
        var policy = AccelPolicy.alwaysRedirect
        policy.cidrs = ["::1/128"]
        try AccelFixture.with(policy: policy) { fixture in
            _ = try fixture.pair(.ipv4)
            #expect(try fixture.counters.sockets_tracked == 0)
            _ = try fixture.pair(.ipv6)
            #expect(try fixture.counters.sockets_tracked == 2)
            policy.cidrs = ["127.0.0.0/8"]
            try fixture.accelerator.setPolicy(policy)
            #expect(try fixture.accelerator.policy().cidrs == ["127.0.0.0/8"])
            _ = try fixture.pair(.ipv4)
            _ = try fixture.pair(.ipv4ToDualStack)
            #expect(try fixture.counters.sockets_tracked == 6)
        }
    }

    @Test("trace streams established, accelerated and closed events with the real 4-tuple")
    func trace() throws {
        try AccelFixture.with { fixture in
            nonisolated(unsafe) var events: [AccelEvent] = []
            nonisolated(unsafe) var ports: (client: UInt16, server: UInt16) = (0, 0)
            let ready = DispatchSemaphore(value: 0)
            try concurrently([
                {
                    let accelerator = try Accelerator.open(pinDirectory: fixture.accelerator.pinDirectory)
                    let deadline = Date().addingTimeInterval(10)
                    var signalled = false
                    try accelerator.trace(pollMilliseconds: 20, shouldStop: {
                        if !signalled { signalled = true; ready.signal() }
                        return Date() > deadline
                    }) { event in
                        events.append(event)
                        return events.filter { $0.kind == .closed }.count < 2
                    }
                },
                {
                    ready.wait()
                    let (client, server) = try fixture.pair()
                    ports = (client.localPort, server.localPort)
                    _ = try transfer(from: client, to: server, count: 10_000, chunk: 10_000, shutdown: false)
                    client.close()
                    server.close()
                },
            ])
            let established = events.filter { $0.kind == .established }
            #expect(established.count == 2)
            #expect(established.contains { $0.localPort == ports.client && $0.remotePort == ports.server && $0.local == "127.0.0.1" })
            #expect(established.contains { $0.localPort == ports.server && $0.remotePort == ports.client })
            #expect(events.contains { $0.kind == .accelerated && $0.localPort == ports.client })
            #expect(events.filter { $0.kind == .closed }.count == 2)
        }
    }

    @Test("adaptive: bulk sends redirect; small streaming writes go back to the stack; request/response redirects")
    func adaptiveDecisions() throws {
        try AccelFixture.with(policy: AccelPolicy()) { fixture in
            let bulk = try fixture.pair()
            let bulkResult = try transfer(from: bulk.client, to: bulk.server, count: 8 << 20, chunk: 65_536, shutdown: false)
            #expect(bulkResult.count == 8 << 20 && bulkResult.firstMismatch == nil)
            let afterBulk = try fixture.counters
            #expect(afterBulk.redirected_bytes >= UInt64(8 << 20) - 65_536 * 40)

            let small = try fixture.pair()
            let smallResult = try transfer(from: small.client, to: small.server, count: 4 << 20, chunk: 256, seed: 2, shutdown: false)
            #expect(smallResult.count == 4 << 20 && smallResult.firstMismatch == nil)
            let afterSmall = try fixture.counters
            // Only the probe sends were redirected; the rest took the stack without sk_msg at all,
            // because the sender left the hash.
            #expect(afterSmall.redirected_bytes - afterBulk.redirected_bytes < 64 * 1024, "small streaming writes went to the stack")
            #expect(afterSmall.sockets_released >= 1, "the small-writing sender left the hash")

            let chat = try fixture.pair()
            func exchange(_ rounds: Range<Int>) throws {
                for round in rounds {
                    try chat.client.sendAll(Array(repeating: UInt8(round & 0xff), count: 64))
                    #expect(try chat.server.receive(exactly: 64) == Array(repeating: UInt8(round & 0xff), count: 64))
                    try chat.server.sendAll(Array(repeating: UInt8((round + 1) & 0xff), count: 64))
                    #expect(try chat.client.receive(exactly: 64) == Array(repeating: UInt8((round + 1) & 0xff), count: 64))
                }
            }
            try exchange(0..<10)  // both directions observe, then settle
            let warm = try fixture.counters
            try exchange(10..<50)
            let afterChat = try fixture.counters
            #expect(afterChat.redirected_messages - warm.redirected_messages == 80, "request and response both stay redirected")
            #expect(afterChat.fallback_stack_messages == warm.fallback_stack_messages, "neither direction went back to the stack")
        }
    }

    @Test("disable leaves nothing attached or pinned, and bytes redirected but unread are still delivered")
    func disableLeavesNothing() throws {
        try TestCgroup.with { cgroup in
            let directory = cgroup.pinDirectory + "/accel"
            let pattern = PatternStream(seed: 30)
            // Every descriptor to the maps is gone when this returns, as when `strait accel disable` exits.
            func enableSendDisable() throws -> (client: TestSocket, server: TestSocket) {
                let accelerator = try Accelerator.enable(cgroup: cgroup.cgroup, policy: .alwaysRedirect, pinDirectory: directory, calibration: nil)
                let pair = try cgroup.inside {
                    let listener = try TestListener(.ipv4)
                    return try listener.connectPair()
                }
                try pair.client.send(pattern, count: 100_000, chunk: 10_000)
                #expect(try accelerator.counters().redirected_bytes == 100_000)
                try accelerator.disable()
                return pair
            }
            let (client, server) = try enableSendDisable()
            #expect(!BPFFS.exists(directory), "no pins left")
            #expect(try cgroup.cgroup.attachedProgramIDs().isEmpty, "nothing attached to the cgroup")
            usleep(200_000)  // the kernel frees the socket hash after an RCU grace period

            try pattern.forEachChunk(from: 100_000, count: 50_000, chunk: 10_000) { try client.sendAll($0) }
            try client.shutdownWrite()
            server.setReceiveTimeout(seconds: 5)
            let received = try server.receiveAndVerify(pattern)
            #expect(received.count == 150_000, "bytes queued before disable and sent after it all arrive")
            #expect(received.firstMismatch == nil)
        }
    }
}

