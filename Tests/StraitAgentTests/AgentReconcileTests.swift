import Foundation
import StraitAccel
import StraitAgent
import StraitBPF
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

/// The agent against the real kernel, each test in its own cgroup, pin folder and namespaces.
@Suite("agent: reconcile, restart, reload, cleanup, metrics", .serialized, kernelGate)
struct AgentReconcileTests {
    @Test("from nothing: accel, drop and proxy are made, and the agent is ready")
    func reconcileFromNothing() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml())
            let agent = lab.agent()
            let outcome = try agent.start()
            defer { Task { await agent.stop() } }
            #expect(outcome.changes.map(\.action) == [.created, .created, .created, .unchanged], "\(outcome.changes)")
            #expect(outcome.differences.isEmpty, "\(outcome.differences)")
            #expect(Accelerator.isEnabled(pinDirectory: lab.paths.accelDirectory))
            #expect(try Accelerator.open(pinDirectory: lab.paths.accelDirectory).cgroup()?.path == lab.cgroup.cgroup.path)
            #expect(try lab.xdpProgramID() != 0)
            #expect(try Dropper.open(pinDirectory: lab.paths.dropDirectory).ruleSet().rules == [try DropRule(parsing: lab.blockedIPv4)])
            #expect(agent.runningProxy?.listenerAddresses["web"] != nil)
            #expect(AgentState.read(lab.paths.stateFile) == AgentState(
                accelCgroup: lab.cgroup.cgroup.path,
                dropInterfaces: [DropInterface(name: lab.receiverInterface, mode: .native, netns: lab.receiver.name)]))
            let address = try #require(agent.endpointAddress)
            #expect(try httpGet(address, "/readyz").status == 200)
            #expect(try httpGet(address, "/healthz").status == 200)
            #expect(try httpGet(address, "/metricsx").status == 404)
            #expect(try httpGet(address, "/readyz/").status == 404)
            await agent.stop()
        }
    }

    @Test("an agent restart adopts the pins: an accelerated connection keeps flowing byte-exact, no rule is lost")
    func restartKeepsConnectionsAndRules() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml(proxy: false))
            let first = lab.agent()
            try first.start()
            let accelLink = try lab.linkID(lab.accelLinkPath)
            let dropLink = try lab.linkID(lab.dropLinkPath)
            let program = try lab.xdpProgramID()
            try lab.sendDatagrams(from: lab.blockedIPv4, count: 5)
            let hitsBefore = try lab.waitForRuleHits(lab.blockedIPv4, atLeast: 5)
            #expect(hitsBefore >= 5)

            let (client, server) = try lab.cgroup.inside {
                let listener = try TestListener(.ipv4)
                return try listener.connectPair()
            }
            defer { client.close(); server.close() }
            let accelerator = try Accelerator.open(pinDirectory: lab.paths.accelDirectory)
            let total = 24 << 20, chunk = 64 << 10
            let pattern = PatternStream(seed: 13)
            nonisolated(unsafe) var seen: (count: Int, firstMismatch: Int?) = (0, nil)
            nonisolated(unsafe) var second: Agent?
            nonisolated(unsafe) var secondOutcome: Agent.Outcome?
            nonisolated(unsafe) var redirectedAtRestart: UInt64 = 0
            try concurrently([
                {
                    // Paced, so the restart happens mid-stream (about 400 chunks, 1 ms apart).
                    try pattern.forEachChunk(count: total, chunk: chunk) { bytes in
                        try client.sendAll(bytes)
                        usleep(1000)
                    }
                    try client.shutdownWrite()
                },
                { seen = try server.receiveAndVerify(pattern) },
                {
                    usleep(100_000)
                    let done = DispatchSemaphore(value: 0)
                    Task {
                        await first.stop()
                        done.signal()
                    }
                    done.wait()
                    redirectedAtRestart = try Accelerator.open(pinDirectory: lab.paths.accelDirectory).counters().redirected_bytes
                    let agent = lab.agent()
                    secondOutcome = try agent.start()
                    second = agent
                },
            ])
            defer { if let second { Task { await second.stop() } } }
            #expect(seen.count == total)
            #expect(seen.firstMismatch == nil)
            let outcome = try #require(secondOutcome)
            #expect(outcome.changes.map(\.action) == [.unchanged, .unchanged, .unchanged, .unchanged], "\(outcome.changes)")
            #expect(outcome.differences.isEmpty)
            #expect(try lab.linkID(lab.accelLinkPath) == accelLink)
            #expect(try lab.linkID(lab.dropLinkPath) == dropLink)
            #expect(try lab.xdpProgramID() == program)
            // Still accelerated after the restart: the kernel kept redirecting this connection's sends.
            #expect(redirectedAtRestart < UInt64(total))
            #expect(try accelerator.counters().redirected_bytes >= UInt64(total))
            // The rule is the same rule (its counter kept counting) and still drops.
            try lab.sendDatagrams(from: lab.blockedIPv4, count: 5)
            #expect(try lab.waitForRuleHits(lab.blockedIPv4, atLeast: hitsBefore + 5) >= hitsBefore + 5)
            await second?.stop()
        }
    }

    @Test("a reload applies only the difference: changed parts change, unchanged ones are not touched")
    func reloadAppliesDifference() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml())
            let agent = lab.agent()
            try agent.start()
            defer { Task { await agent.stop() } }
            let accelLink = try lab.linkID(lab.accelLinkPath)
            let program = try lab.xdpProgramID()
            let proxyAddress = agent.runningProxy?.listenerAddresses["web"]
            try lab.sendDatagrams(from: lab.blockedIPv4, count: 4)
            let hits = try lab.waitForRuleHits(lab.blockedIPv4, atLeast: 4)

            try lab.write(lab.yaml(accelPorts: [6379], extraRules: ["tcp/23"]))
            let outcome = agent.reload()
            #expect(outcome.rejected == nil)
            #expect(outcome.changes.map(\.action) == [.updated, .updated, .unchanged, .unchanged], "\(outcome.changes)")
            #expect(outcome.changes[1].detail == "rules +1 -0")
            #expect(outcome.differences.isEmpty, "\(outcome.differences)")
            #expect(try Accelerator.open(pinDirectory: lab.paths.accelDirectory).policy().ports == [6379])
            #expect(try lab.linkID(lab.accelLinkPath) == accelLink)
            #expect(try lab.xdpProgramID() == program)
            #expect(try lab.ruleHits(lab.blockedIPv4) ?? 0 >= hits, "the unchanged rule kept its counter")
            #expect(try lab.ruleHits("tcp/23") == 0)
            #expect(agent.runningProxy?.listenerAddresses["web"] == proxyAddress, "the proxy kept its listener")

            // The same file again: nothing to do.
            #expect(agent.reload().changes.map(\.action) == [.unchanged, .unchanged, .unchanged, .unchanged])
            await agent.stop()
        }
    }

    @Test("a section removed from the file removes what the agent made of it, and only that")
    func removedSections() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml(proxy: false))
            let agent = lab.agent()
            try agent.start()
            defer { Task { await agent.stop() } }

            // Only the proxy remains: accel and drop, which this agent made, go.
            try lab.write("metrics: 127.0.0.1:0\n")
            let outcome = agent.reload()
            #expect(outcome.changes.map(\.action) == [.removed, .removed, .unchanged, .unchanged], "\(outcome.changes)")
            #expect(!Accelerator.isEnabled(pinDirectory: lab.paths.accelDirectory))
            #expect(!Dropper.isLoaded(pinDirectory: lab.paths.dropDirectory))
            #expect(try lab.xdpProgramID() == 0)
            #expect(AgentState.read(lab.paths.stateFile) == AgentState())

            // Acceleration enabled by hand is not the agent's: a file without accel leaves it on.
            _ = try Accelerator.enable(cgroup: lab.cgroup.cgroup, pinDirectory: lab.paths.accelDirectory)
            #expect(agent.reload().changes.first?.action == .unchanged)
            #expect(Accelerator.isEnabled(pinDirectory: lab.paths.accelDirectory))
            // Named again in the file, it is adopted as it is (same link), and owned from then on.
            let link = try lab.linkID(lab.accelLinkPath)
            var policy = AccelPolicy()
            policy.adaptive = false
            _ = try Accelerator.enable(cgroup: lab.cgroup.cgroup, policy: policy, pinDirectory: lab.paths.accelDirectory)
            try lab.write("metrics: 127.0.0.1:0\naccel:\n  cgroup: \(lab.cgroup.cgroup.path)\n  mode: always\n")
            let adopted = agent.reload()
            #expect(adopted.changes.first?.action == .unchanged, "\(adopted.changes)")
            #expect(try lab.linkID(lab.accelLinkPath) == link)
            #expect(AgentState.read(lab.paths.stateFile).accelCgroup == lab.cgroup.cgroup.path)
            await agent.stop()
        }
    }

    @Test("a file that does not check is rejected whole; the running state stays")
    func brokenFileKeepsState() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml())
            let agent = lab.agent()
            try agent.start()
            defer { Task { await agent.stop() } }
            let before = try Dropper.open(pinDirectory: lab.paths.dropDirectory).ruleSet()
            let policy = try Accelerator.open(pinDirectory: lab.paths.accelDirectory).policy()

            // A valid accel change beside a broken drop rule: neither may be applied.
            try lab.write(lab.yaml(accelPorts: [80], extraRules: ["198.18.0.0/99"]))
            let outcome = agent.reload()
            let rejected = try #require(outcome.rejected)
            #expect(rejected.problems.count == 1)
            #expect(rejected.problems[0].file == lab.configPath && rejected.problems[0].line > 0)
            #expect(outcome.changes.isEmpty)
            #expect(try Dropper.open(pinDirectory: lab.paths.dropDirectory).ruleSet() == before)
            #expect(try Accelerator.open(pinDirectory: lab.paths.accelDirectory).policy() == policy)
            #expect(outcome.differences.isEmpty, "still in sync with the last good file")
            #expect(try httpGet(try #require(agent.endpointAddress), "/metrics").body.contains("strait_agent_reloads_total{result=\"rejected\"} 1"))
            await agent.stop()
        }
    }

    @Test("cleanup leaves nothing behind: no link, no pin, no XDP program, no state file")
    func cleanupLeavesNothing() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml())
            let agent = lab.agent()
            try agent.start()
            await agent.stop()
            #expect(Accelerator.isEnabled(pinDirectory: lab.paths.accelDirectory), "stopping keeps the kernel state")

            let removed = try KernelReconciler(paths: lab.paths).cleanup(state: AgentState.read(lab.paths.stateFile))
            #expect(removed.count == 2, "\(removed)")
            #expect(!FileManager.default.fileExists(atPath: lab.paths.pinRoot))
            #expect(!FileManager.default.fileExists(atPath: lab.paths.stateFile))
            #expect(try lab.xdpProgramID() == 0)
            let query = try bpftool(["cgroup", "show", lab.cgroup.cgroup.path])
            #expect(!query.contains("sock_ops"), "\(query)")
        }
    }

    @Test("/metrics shows live counters of every part")
    func metricsShowEveryPart() async throws {
        try await AgentLab.with { lab in
            try lab.write(lab.yaml())
            let agent = lab.agent()
            try agent.start()
            defer { Task { await agent.stop() } }
            let address = try #require(agent.endpointAddress)
            let before = try httpGet(address, "/metrics").body

            // accel: one accelerated transfer in the test cgroup.
            let (client, server) = try lab.cgroup.inside { try TestListener(.ipv4).connectPair() }
            defer { client.close(); server.close() }
            try client.sendAll([UInt8](repeating: 7, count: 100_000))
            _ = try server.receive(exactly: 100_000)
            // drop: frames from the blocked address.
            try lab.sendDatagrams(from: lab.blockedIPv4, count: 3)
            _ = try lab.waitForRuleHits(lab.blockedIPv4, atLeast: 3)
            // proxy: one client connection.
            let proxyPort = try #require(agent.runningProxy?.listenerAddresses["web"]?.port)
            let proxied = try connectLoopback(port: proxyPort)
            defer { proxied.close() }
            var connections: Double = 0
            for _ in 0..<100 where connections < 1 {
                usleep(20_000)
                connections = sample(try httpGet(address, "/metrics").body, "strait_proxy_connections_total{listener=\"web\"}") ?? 0
            }

            let after = try httpGet(address, "/metrics").body
            #expect(sample(after, "strait_build_info{version=\"test\"}") == 1)
            #expect(sample(after, "strait_agent_in_sync") == 1)
            #expect(sample(after, "strait_agent_reconciles_total{part=\"drop\",action=\"created\"}") == 1)
            #expect(sample(after, "strait_accel_enabled") == 1)
            #expect((sample(after, "strait_accel_redirected_bytes_total") ?? 0) >= 100_000)
            #expect((sample(after, "strait_accel_redirected_bytes_total") ?? 0) > (sample(before, "strait_accel_redirected_bytes_total") ?? 0))
            #expect((sample(after, "strait_drop_rule_frames_total{rule=\"\(lab.blockedIPv4)/32\"") ?? 0) >= 3)
            #expect((sample(after, "strait_drop_frames_total{verdict=") ?? -1) >= 0)
            #expect(connections >= 1)
            await agent.stop()
        }
    }
}

/// Runs bpftool and returns its standard output.
func bpftool(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/bpftool")
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}
