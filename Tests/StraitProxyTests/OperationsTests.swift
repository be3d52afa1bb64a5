import Foundation
import StraitNet
@testable import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
func httpRequest(port: UInt16, _ path: String, method: String = "GET") throws -> (status: Int, body: String) {
    let socket = try connectClient(port: port, timeoutSeconds: 5)
    defer { socket.close() }
    try socket.sendAll(Array("\(method) \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8))
    let response = String(decoding: try socket.receiveToEnd(), as: UTF8.self)
    let status = Int(response.split(separator: " ").dropFirst().first ?? "") ?? 0
    let body = response.range(of: "\r\n\r\n").map { String(response[$0.upperBound...]) } ?? ""
    return (status, body)
}

@Suite("Configuration: every mistake, compound durations, backups, retries, passive health")
struct OperationsConfigTests {
    @Test("--check's reader reports every mistake of a file, each at its line and column")
    func everyMistake() throws {
        let yaml = """
            clusters:
              - name: b
                upstreams: [127.0.0.1:1]
                retries: 99
                helth_check: {}
            listeners:
              - bind: 127.0.0.1:6000
                cluster: b
                datapath: kernel
                connect_timeout: soon
            """
        do {
            _ = try ProxyConfigLoader.check(yaml, file: "bad.yaml")
            Issue.record("accepted")
        } catch {
            let found = error.errors.map { "\($0.line):\($0.column)" }
            #expect(found == ["5:5", "4:14", "9:15", "10:22"], "\(error)")
            #expect(error.errors[0].message.contains("unknown key `helth_check`"))
            #expect(error.errors[1].message.contains("`retries` as an integer in 0...10"))
            #expect(error.errors[2].message.contains("one of copy"))
            #expect(error.errors[3].message.contains("1m30s"))
        }
        // The first mistake is what load and parse throw, as before.
        #expect(throws: ProxyConfigError.self) { try ProxyConfigLoader.parse(yaml, file: "bad.yaml") }
    }

    @Test("value checks run once the shape is right, and all of them are reported")
    func everyValueProblem() throws {
        var config = ProxyHarness.config(datapath: .copy, upstreams: [.ip(IPAddress("127.0.0.1")!, port: 1)])
        config.listeners[0].cluster = "nope"
        config.listeners[0].maxConnections = 0
        config.clusters[0].upstreams[0].weight = 0
        config.drainTimeout = .seconds(400 * 86_400)
        let problems = config.problems(dualStack: true)
        #expect(problems.count == 4, "\(problems)")
        #expect(throws: ProxyConfigProblem.self) { try config.validate(dualStack: true) }
    }

    @Test("compound durations are exact and range-checked", arguments: [
        ("1m30s", Duration.seconds(90)), ("1h5m", .seconds(3900)), ("2s500ms", .milliseconds(2500)), ("1.5m", .seconds(90)),
        ("1h0m0s", .seconds(3600)), ("250ms", .milliseconds(250)), ("7", .seconds(7)), ("8784h", .seconds(366 * 86_400)),
    ])
    func compoundDurations(text: String, expected: Duration) {
        #expect(Duration(parsing: text) == expected)
    }

    @Test("malformed durations are refused", arguments: ["30s1m", "1m1m", "1m30", "", "m", "1d", "1 m", "-1s", "1e3s", "8784h1ms", "1s.5ms", "ms1"])
    func malformedDurations(text: String) {
        #expect(Duration(parsing: text) == nil, "\(text)")
    }

    @Test("backup, retries, passive_health and a bare metrics host read into the config")
    func newKeys() throws {
        let config = try ProxyConfigLoader.parse("""
            clusters:
              - name: b
                retries: 2
                passive_health: { failures: 3, ejection: 1m30s }
                upstreams:
                  - 127.0.0.1:5201
                  - { address: 127.0.0.1:5202, backup: true }
            listeners:
              - { bind: 127.0.0.1:6000, cluster: b }
            metrics: 127.0.0.1
            """, file: "ok.yaml")
        #expect(config.clusters[0].retries == 2)
        #expect(config.clusters[0].passiveHealth == PassiveHealth(failures: 3, ejection: .seconds(90)))
        #expect(config.clusters[0].upstreams.map(\.backup) == [false, true])
        #expect(config.metricsAddress == .ip(IPAddress("127.0.0.1")!, port: ProxyConfig.defaultMetricsPort))
        #expect(ProxyConfig.defaultMetricsPort != 9100, "node_exporter's port")
    }

    @Test("a cluster of backups only is refused")
    func backupsOnly() {
        #expect(throws: ProxyConfigError.self) {
            try ProxyConfigLoader.parse("clusters:\n  - name: b\n    upstreams:\n      - { address: 127.0.0.1:1, backup: true }\nlisteners:\n  - { bind: 127.0.0.1:6000, cluster: b }\n", file: "b.yaml")
        }
    }

    @Test("the fingerprint ignores comments and spacing, and changes with any value")
    func fingerprint() throws {
        let base = "clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - { bind: 127.0.0.1:6000, cluster: b }\n"
        let a = try ProxyConfigLoader.parse(base, file: "a")
        let b = try ProxyConfigLoader.parse("# a comment\n" + base.replacingOccurrences(of: "{ bind", with: "{  bind"), file: "b")
        let c = try ProxyConfigLoader.parse(base.replacingOccurrences(of: "6000", with: "6001"), file: "c")
        #expect(a.fingerprint == b.fingerprint)
        #expect(a.fingerprint != c.fingerprint)
        #expect(a.fingerprint.count == 16)
    }
}

@Suite("Balancer: backups, passive health, drain, retries")
struct AdmissionTests {
    let members: [SocketAddress] = (1...3).map { .ip(IPAddress("198.18.0.\($0)")!, port: 80) }

    func balancer(backups: [Bool] = [false, false, true], passive: PassiveHealth? = nil, retries: Int = 0) -> (Balancer, [UpstreamState]) {
        let states = members.map { UpstreamState(address: $0) }
        let cluster = ClusterConfig(
            name: "c", upstreams: zip(members, backups).map { UpstreamConfig(address: $0, backup: $1) }, passiveHealth: passive, retries: retries)
        return (Balancer(cluster: cluster, members: states), states)
    }

    @Test("a backup is used only while no primary is up")
    func backupOnlyWhenPrimariesDown() {
        let (balancer, states) = balancer()
        let picks = Set((0..<20).map { _ in balancer.pick(clientAddress: nil)!.address })
        #expect(picks == [members[0], members[1]])
        states[0].healthy.store(false, ordering: .relaxed)
        #expect(Set((0..<10).map { _ in balancer.pick(clientAddress: nil)!.address }) == [members[1]])
        states[1].admission.draining.store(true, ordering: .relaxed)
        #expect(balancer.pick(clientAddress: nil)?.address == members[2], "primaries down or drained: the backup")
        states[0].healthy.store(true, ordering: .relaxed)
        #expect(balancer.pick(clientAddress: nil)?.address == members[0], "a primary back: the backup idles again")
    }

    @Test("consecutive connect failures eject an upstream for the back-off, and it returns")
    func ejectionAndReturn() async throws {
        let (balancer, states) = balancer(backups: [false, false, false], passive: PassiveHealth(failures: 3, ejection: .milliseconds(200)))
        #expect(!balancer.connectFailed(states[0]))
        #expect(!balancer.connectFailed(states[0]))
        balancer.connected(states[0])  // a success resets the run
        #expect(!balancer.connectFailed(states[0]))
        #expect(!balancer.connectFailed(states[0]))
        #expect(balancer.connectFailed(states[0]), "the third in a row ejects")
        #expect(states[0].admission.ejections.load(ordering: .relaxed) == 1)
        #expect(!(0..<20).contains { _ in balancer.pick(clientAddress: nil) === states[0] })
        try await Task.sleep(for: .milliseconds(300))
        #expect((0..<20).contains { _ in balancer.pick(clientAddress: nil) === states[0] }, "back after the ejection")
        // Failing again without a success in between: the second ejection lasts twice as long.
        for _ in 0..<3 { balancer.connectFailed(states[0]) }
        let now = SocketCall.monotonicNanoseconds()
        let left = states[0].admission.ejectedUntil.load(ordering: .relaxed) &- now
        #expect(left > 300_000_000 && left <= 400_000_000, "\(left) ns")
    }

    @Test("nextUpstream never returns an excluded upstream, and nil when none is left")
    func excluding() {
        let (balancer, states) = balancer(backups: [false, false, false], retries: 2)
        let first = balancer.nextUpstream(clientAddress: nil, excluding: [])!
        let second = balancer.nextUpstream(clientAddress: nil, excluding: [first])!
        let third = balancer.nextUpstream(clientAddress: nil, excluding: [first, second])!
        #expect(Set([first, second, third].map(\.address)) == Set(members))
        #expect(balancer.nextUpstream(clientAddress: nil, excluding: states) == nil)
    }
}

@Suite("Control socket, status, reload verdicts, retries, drain, live metrics")
struct ControlTests {
    /// A proxy with a controller and a control socket in a private folder, from a file there.
    static func withControlledProxy(
        _ yaml: String, _ body: (Proxy, ProxyController, _ configPath: String, _ controlPath: String) async throws -> Void
    ) async throws {
        _ = ProxyHarness.descriptorHeadroom
        try await withTestFolder { folder in
            let path = folder + "/strait.yaml"
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            let config = try ProxyConfigLoader.load(path: path)
            let proxy = try Proxy(config: config, loopCount: 2, kernelDatapath: true, logger: ProxyHarness.logger)
            let controller = ProxyController(proxy: proxy, config: config, configPath: path)
            let controlPath = folder + "/proxy.control"
            let control = try ControlSocket(path: controlPath, controller: controller)
            do {
                try await body(proxy, controller, path, controlPath)
            } catch {
                await control.close()
                await proxy.shutdown(drainTimeout: .zero)
                throw error
            }
            await control.close()
            #expect(!FileManager.default.fileExists(atPath: controlPath), "the control socket's file is removed")
            await proxy.shutdown(drainTimeout: .seconds(2))
        }
    }

    @Test("a handed-over control socket is adopted by the path its note names; the old one stops accepting and leaves the path to the adopter")
    func handedOverControlSocket() async throws {
        try await withTestFolder { folder in
            let path = folder + "/strait.yaml"
            try Self.yaml(upstreams: ["127.0.0.1:1"]).write(toFile: path, atomically: true, encoding: .utf8)
            let config = try ProxyConfigLoader.load(path: path)
            let proxy = try Proxy(config: config, loopCount: 1, kernelDatapath: false, logger: ProxyHarness.logger)
            let controller = ProxyController(proxy: proxy, config: config, configPath: path)
            let controlPath = folder + "/proxy.control"
            let old = try ControlSocket(path: controlPath, controller: controller)
            let inode = { () -> ino_t? in
                var info = stat()
                return stat(controlPath, &info) == 0 ? info.st_ino : nil
            }
            let before = inode()
            let note = InheritedSockets.handOverNote(listeners: [], metrics: nil, control: old.path)
            var inherited = InheritedSockets(note: note, descriptors: OwnedDescriptors(taking: [try OwnedDescriptor.duplicating(old.listeningDescriptor).take()]))
            if let _ = inherited.takeControl(at: controlPath + ".other") { Issue.record("a control socket for another path was handed out") }
            guard let descriptor = inherited.takeControl(at: controlPath) else {
                Issue.record("the note's control socket was not found at \(controlPath)")
                await old.close()
                return await proxy.shutdown(drainTimeout: .zero)
            }
            let adopter = try ControlSocket(adopting: descriptor, path: controlPath, controller: controller)
            old.stopAccepting()
            await old.close()
            #expect(inode() == before, "the old control socket left the path, which names the same socket")
            for _ in 0..<5 { _ = try JSONDecoder().decode(ProxyStatus.self, from: try ControlSocket.send("status", to: controlPath)) }
            await adopter.close()
            #expect(inode() == nil, "the adopter removes the path it owns")
            await proxy.shutdown(drainTimeout: .zero)
        }
    }

    static func yaml(upstreams: [String], listen: UInt16 = 0, extra: String = "", metrics: UInt16? = nil, cluster: String = "") -> String {
        var text = """
            clusters:
              - name: backend
            \(cluster)    upstreams:
            \(upstreams.map { "      - \($0)" }.joined(separator: "\n"))
            listeners:
              - name: web
                bind: 127.0.0.1:\(listen)
                cluster: backend
                datapath: copy
            \(extra)access_log: false

            """
        if let metrics { text += "metrics: 127.0.0.1:\(metrics)\n" }
        return text
    }

    static func status(_ controlPath: String) throws -> ProxyStatus {
        try JSONDecoder().decode(ProxyStatus.self, from: try ControlSocket.send("status", to: controlPath))
    }

    @Test("a rejected reload answers every error, counts it, and the old configuration keeps serving")
    func rejectedReload() async throws {
        let upstream = try namedUpstream("one")
        defer { upstream.stop() }
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(upstream.port)"])) { proxy, _, path, control in
            let port = try #require(proxy.listenerAddresses["web"]?.port)
            try "clusters:\n  - name: backend\n    upstreams: [127.0.0.1:1]\n    retries: -1\nlisteners:\n  - bind: nowhere\n    cluster: backend\n".write(toFile: path, atomically: true, encoding: .utf8)
            let verdict = try JSONDecoder().decode(ReloadVerdict.self, from: try ControlSocket.send("reload", to: control))
            #expect(!verdict.applied)
            #expect(verdict.errors.count == 2, "\(verdict.errors)")
            #expect(verdict.errors.allSatisfy { $0.hasPrefix(path + ":") })
            #expect(try whoAnswers(port: port) == "one", "the old configuration serves on")
            #expect(ProxyHarness.metric(proxy, "strait_proxy_reloads_total", "result=\"rejected\"") == 1)
            let status = try Self.status(control)
            #expect(status.lastReload?.applied == false && status.lastReload?.errors == verdict.errors)
            #expect(status.configFingerprint == verdict.configFingerprint)
        }
    }

    @Test("an applied reload answers its fingerprint; a changed metrics address moves, a taken one is refused")
    func metricsAddressOnReload() async throws {
        let upstream = try namedUpstream("one")
        defer { upstream.stop() }
        let (first, second) = try twoFreePorts()
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(upstream.port)"], metrics: first)) { proxy, controller, path, control in
            #expect(try httpRequest(port: first, "/healthz").status == 200)
            try Self.yaml(upstreams: ["127.0.0.1:\(upstream.port)"], metrics: second).write(toFile: path, atomically: true, encoding: .utf8)
            let moved = try JSONDecoder().decode(ReloadVerdict.self, from: try ControlSocket.send("reload", to: control))
            #expect(moved.applied, "\(moved)")
            #expect(moved.notes.contains { $0.contains("metrics moved") }, "\(moved.notes)")
            #expect(moved.configFingerprint == controller.config.fingerprint)
            #expect(try httpRequest(port: second, "/metrics").status == 200)
            #expect((try? httpRequest(port: first, "/metrics")) == nil, "the old metrics address is closed")
            // A metrics address something else holds: the reload is refused and says why.
            let squatter = try TestListener(.ipv4)
            try Self.yaml(upstreams: ["127.0.0.1:\(upstream.port)"], metrics: squatter.port).write(toFile: path, atomically: true, encoding: .utf8)
            let refused = try JSONDecoder().decode(ReloadVerdict.self, from: try ControlSocket.send("reload", to: control))
            #expect(!refused.applied && refused.errors.first?.contains("cannot bind") == true, "\(refused)")
            #expect(try httpRequest(port: second, "/metrics").status == 200, "metrics stay where they were")
            #expect(proxy.metricsAddress?.port == second)
            #expect(ProxyHarness.metric(proxy, "strait_proxy_reloads_total", "result=\"applied\"") == 1)
        }
    }

    @Test("/status, /healthz and /readyz match exactly; /metrics has HELP on every family, build info and process metrics")
    func endpoints() async throws {
        let upstream = try namedUpstream("one")
        defer { upstream.stop() }
        let metricsPort = try TestListener(.ipv4).port
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(upstream.port)"], metrics: metricsPort)) { proxy, _, _, _ in
            #expect(try whoAnswers(port: try #require(proxy.listenerAddresses["web"]?.port)) == "one")
            #expect(try httpRequest(port: metricsPort, "/healthz") == (200, "ok\n"))
            #expect(try httpRequest(port: metricsPort, "/readyz") == (200, "ready\n"))
            #expect(try httpRequest(port: metricsPort, "/readyzz").status == 404)
            #expect(try httpRequest(port: metricsPort, "/status/").status == 404)
            let status = try JSONDecoder().decode(ProxyStatus.self, from: Data(try httpRequest(port: metricsPort, "/status").body.utf8))
            #expect(status.listeners.map(\.name) == ["web"] && status.ready)
            #expect(status.clusters.first?.upstreams.first?.address == "127.0.0.1:\(upstream.port)")
            let text = try httpRequest(port: metricsPort, "/metrics").body
            let families = Set(text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] })
            let helped = Set(text.split(separator: "\n").filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
            #expect(!families.isEmpty && families == helped, "families without HELP: \(families.subtracting(helped))")
            for family in families where text.contains("# TYPE \(family) counter") { #expect(family.hasSuffix("_total"), "\(family)") }
            #expect(text.contains("strait_build_info{version=\""))
            #expect(text.contains("process_resident_memory_bytes "))
            #expect(text.contains("process_open_fds "))
            #expect(text.contains("strait_proxy_upstream_connect_duration_seconds_bucket{cluster=\"backend\""))
            // Once the listeners stop (a drain, or a successor took them), the proxy is not ready; the
            // metrics listener stops accepting with them (it travels to a successor), so a probe
            // sees 503 or a refused connection.
            proxy.stopAccepting()
            #expect(!proxy.status().ready)
            #expect(((try? httpRequest(port: metricsPort, "/readyz"))?.status ?? 503) == 503)
        }
    }

    @Test("status shows an upstream going down and coming back")
    func statusFollowsHealth() async throws {
        let port = try closedPort()
        let health = "    health_check: { interval: 50ms, timeout: 40ms, rise: 1, fall: 1 }\n"
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(port)"], cluster: health)) { _, _, _, control in
            func state() throws -> String? { try Self.status(control).clusters.first?.upstreams.first?.state }
            for _ in 0..<100 where try state() != "down" { try await Task.sleep(for: .milliseconds(20)) }
            #expect(try state() == "down")
            let upstream = try namedUpstream("back", port: port)
            defer { upstream.stop() }
            for _ in 0..<100 where try state() != "up" { try await Task.sleep(for: .milliseconds(20)) }
            #expect(try state() == "up")
        }
    }

    @Test("retries get a client past a dead upstream; passive health ejects it and status says so")
    func retriesAndEjection() async throws {
        let alive = try namedUpstream("alive")
        defer { alive.stop() }
        let dead = try closedPort()
        let cluster = "    retries: 1\n    passive_health: { failures: 2, ejection: 1m }\n"
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(dead)", "127.0.0.1:\(alive.port)"], cluster: cluster)) { proxy, _, _, control in
            let port = try #require(proxy.listenerAddresses["web"]?.port)
            for _ in 0..<6 { #expect(try whoAnswers(port: port) == "alive") }
            let upstreams = try Self.status(control).clusters[0].upstreams
            #expect(upstreams[0].state == "ejected" && upstreams[0].ejections == 1, "\(upstreams)")
            #expect(ProxyHarness.metric(proxy, "strait_proxy_connect_retries_total", "cluster=\"backend\"") == 2, "two failed connects before the ejection, each retried")
            #expect(ProxyHarness.metric(proxy, "strait_proxy_upstream_ejections_total", "upstream=\"127.0.0.1:\(dead)\"") == 1)
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"connect_failed\"") == 0, "no client saw a failure")
        }
    }

    @Test("drain: no new connection reaches the upstream, an open one completes byte-exact, undrain takes it back")
    func drain() async throws {
        let drained = try namedUpstream("drained")
        let other = try namedUpstream("other")
        defer { drained.stop(); other.stop() }
        try await Self.withControlledProxy(Self.yaml(upstreams: ["127.0.0.1:\(drained.port)", "127.0.0.1:\(other.port)"])) { proxy, _, _, control in
            let port = try #require(proxy.listenerAddresses["web"]?.port)
            // An open connection on the upstream about to drain.
            var open: TestSocket?
            for _ in 0..<4 where open == nil {
                let client = try connectClient(port: port)
                if try client.receive(exactly: 8) == Array("drained\n".utf8) { open = client } else { client.close() }
            }
            let client = try #require(open)
            let outcome = try JSONDecoder().decode(DrainOutcome.self, from: try ControlSocket.send("drain 127.0.0.1:\(drained.port)", to: control))
            #expect(outcome.draining && outcome.active == 1 && outcome.clusters == ["backend"])
            let before = drained.connections
            for _ in 0..<6 { #expect(try whoAnswers(port: port) == "other") }
            #expect(drained.connections == before, "no new connection reached the drained upstream")
            var random = SeededRandom(seed: 16)
            let payload = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let sender = Thread { try? client.sendAll(payload) }
            sender.start()
            #expect(try client.receive(exactly: payload.count) == payload, "the open connection completes byte-exact")
            client.close()
            #expect(try Self.status(control).clusters[0].upstreams[0].state == "draining")
            _ = try ControlSocket.send("undrain 127.0.0.1:\(drained.port)", to: control)
            #expect((0..<6).contains { _ in (try? whoAnswers(port: port)) == "drained" }, "undrained: it takes connections again")
            #expect(throws: ControlFailure.self) { try ControlSocket.send("drain 127.0.0.1:1", to: control) }
            #expect(throws: ControlFailure.self) { try ControlSocket.send("frobnicate", to: control) }
        }
    }

    @Test("byte counters move during a long transfer, before the connection closes", arguments: ProxyHarness.userspaceDatapaths)
    func liveBytesUserspace(datapath: Datapath) async throws {
        try await Self.liveBytes(datapath: datapath)
    }

    @Test("byte counters move during a long transfer on the kernel datapath", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func liveBytesKernel() async throws {
        try await Self.liveBytes(datapath: .sockmap)
    }

    static func liveBytes(datapath: Datapath) async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        try await ProxyHarness.with(ProxyHarness.config(datapath: datapath, upstreams: [upstream.address])) { proxy, port in
            let client = try connectClient(port: port)
            defer { client.close() }
            let chunk = [UInt8](repeating: 7, count: 64 << 10)
            var seen = 0.0
            // Echo traffic for up to 5 s; the counter must move while the connection is open.
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline && seen == 0 {
                try client.sendAll(chunk)
                _ = try client.receive(exactly: chunk.count)
                seen = ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "direction=\"upstream\"", "listener=\"test\"", "upstream=\"\(upstream.address)\"")
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(seen > 0, "bytes counted while the connection is open")
            #expect(proxy.activeConnections == 1)
        }
    }

    /// The status's datapath mix of the only upstream.
    static func mix(_ proxy: Proxy) throws -> ProxyStatus.Upstream {
        try #require(proxy.status().clusters.first?.upstreams.first)
    }

    @Test("status counts each upstream's connections by datapath, active and total", arguments: ProxyHarness.userspaceDatapaths)
    func datapathMix(datapath: Datapath) async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        try await ProxyHarness.with(ProxyHarness.config(datapath: datapath, upstreams: [upstream.address])) { proxy, port in
            let clients = try (0..<2).map { _ in try connectClient(port: port) }
            for client in clients { try client.sendAll([1]); #expect(try client.receive(exactly: 1) == [1]) }
            let both = try Self.mix(proxy)
            #expect(both.datapaths == [datapath.rawValue: .init(active: 2, total: 2)], "\(both)")
            clients[0].close()
            for _ in 0..<200 where try Self.mix(proxy).datapaths[datapath.rawValue]?.active != 1 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(try Self.mix(proxy).datapaths == [datapath.rawValue: .init(active: 1, total: 2)])
            #expect(try Self.mix(proxy).datapathSwitches == 0)
        }
    }

    @Test("status shows auto's move from copy to sockmap", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func datapathMixAuto() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        try await ProxyHarness.with(ProxyHarness.config(datapath: .auto, upstreams: [upstream.address])) { proxy, port in
            let client = try connectClient(port: port)
            defer { client.close() }
            // Request/response turns: auto moves such a connection to sockmap.
            for turn in 0..<50 where try Self.mix(proxy).datapathSwitches == 0 {
                let ping = Array("ping \(turn)".utf8)
                try client.sendAll(ping)
                #expect(try client.receive(exactly: ping.count) == ping)
            }
            let upstreamStatus = try Self.mix(proxy)
            #expect(upstreamStatus.datapathSwitches == 1, "\(upstreamStatus)")
            #expect(upstreamStatus.datapaths == ["copy": .init(active: 0, total: 1), "sockmap": .init(active: 1, total: 1)], "\(upstreamStatus)")
            try client.shutdownWrite()
            #expect(receiveOnce(client) == 0)
            for _ in 0..<200 where try Self.mix(proxy).datapaths["sockmap"]?.active != 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(try Self.mix(proxy).datapaths["sockmap"] == .init(active: 0, total: 1))
        }
    }
}

/// Tests that run the strait binary and signal its processes: root, as RestartTests.
private let rootGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

@Suite("strait proxy reload, status and drain: the command line")
struct ControlCommandTests {
    @Test("a rejected reload exits 1 with every error of the file, and the old configuration keeps serving", rootGate)
    func rejectedReloadExitsNonZero() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try namedUpstream("kept")
            defer { upstream.stop() }
            let port = try TestListener(.ipv4).port
            let proxy = try ProxyProcess(binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port), namespace: nil)
            defer { proxy.stop() }
            let pid = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
            let common = ["--pid-file", proxy.pidFile, "--handover-socket", proxy.handOver]
            let good = try StraitProcesses.run([binary, "proxy", "reload"] + common)
            #expect(good.status == 0 && good.output.contains("reloaded"), "\(good.output)")
            try "listeners:\n  - bind: 127.0.0.1:\(port)\n    cluster: backend\n    datapath: kernel\n    connect_timeout: soon\nclusters:\n  - name: backend\n    upstreams: [127.0.0.1:\(upstream.port)]\n"
                .write(toFile: proxy.configFile, atomically: true, encoding: .utf8)
            let bad = try StraitProcesses.run([binary, "proxy", "reload"] + common)
            #expect(bad.status == 1, "\(bad.output)")
            #expect(bad.output.contains("rejected") && bad.output.contains(":4:15:") && bad.output.contains(":5:22:"), "both errors: \(bad.output)")
            #expect(try whoAnswers(port: port) == "kept", "the old configuration serves on")
            let status = try StraitProcesses.run([binary, "proxy", "status", "--json", "--handover-socket", proxy.handOver])
            let decoded = try JSONDecoder().decode(ProxyStatus.self, from: Data(status.output.utf8))
            #expect(decoded.pid == pid && decoded.lastReload?.applied == false)
            // whoAnswers relayed a connection: the upstream's datapath mix counts it, in JSON and in text.
            let shares = decoded.clusters.flatMap(\.upstreams).flatMap(\.datapaths.values)
            #expect(shares.reduce(0) { $0 + $1.total } >= 1, "\(decoded.clusters)")
            let text = try StraitProcesses.run([binary, "proxy", "status", "--handover-socket", proxy.handOver])
            #expect(text.status == 0 && text.output.contains("datapaths (active/total): "), "\(text.output)")
            let drained = try StraitProcesses.run([binary, "proxy", "drain", "127.0.0.1:\(upstream.port)", "--handover-socket", proxy.handOver])
            #expect(drained.status == 0 && drained.output.contains("draining"), "\(drained.output)")
            #expect((try? whoAnswers(port: port)) == nil, "a drained only upstream takes no new connection")
            let unknown = try StraitProcesses.run([binary, "proxy", "drain", "127.0.0.1:1", "--handover-socket", proxy.handOver])
            #expect(unknown.status == 1 && unknown.output.contains("no upstream"), "\(unknown.output)")
        }
    }
}

/// A line in /etc/hosts for one test: added, changed, removed, and always taken out again (only
/// this line: the rest of the file is written back as it is then). Written in place, since
/// /etc/hosts is often a bind mount that `rename(2)` cannot replace.
final class HostsEntry {
    let name: String
    private static let path = "/etc/hosts"

    init(address: String) throws {
        name = uniqueTestName("strait-dns") + ".test"
        try set(address)
    }

    /// Points the name at `address` (nil: removes it).
    func set(_ address: String?) throws {
        let current = try String(contentsOfFile: Self.path, encoding: .utf8)
        var lines = current.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasSuffix(" " + name) }
        if lines.last == "" { lines.removeLast() }
        if let address { lines.append(Substring("\(address) \(name)")) }
        try (lines.joined(separator: "\n") + "\n").write(toFile: Self.path, atomically: false, encoding: .utf8)
    }

    deinit { try? set(nil) }
}

@Suite("Upstreams by DNS name")
struct DNSUpstreamTests {
    @Test("a name resolves at check time, is re-resolved on an interval, and a name that stops resolving is counted", rootGate)
    func resolveAndRefresh() async throws {
        let upstream = try namedUpstream("named")
        defer { upstream.stop() }
        let hosts = try HostsEntry(address: "127.0.0.1")
        let extra = "dns_refresh: 100ms\n"
        try await ControlTests.withControlledProxy(ControlTests.yaml(upstreams: ["\(hosts.name):\(upstream.port)"], extra: extra)) { proxy, controller, _, control in
            controller.startRefreshingNames()
            defer { controller.stopRefreshingNames() }
            #expect(controller.config.clusters[0].upstreams.map(\.hostname) == [hosts.name])
            #expect(try whoAnswers(port: try #require(proxy.listenerAddresses["web"]?.port)) == "named")
            try hosts.set("127.0.0.2")
            for _ in 0..<100 where controller.config.clusters[0].upstreams.first?.address.description != "127.0.0.2:\(upstream.port)" {
                try await Task.sleep(for: .milliseconds(20))
            }
            let status = try ControlTests.status(control)
            #expect(status.clusters[0].upstreams.map(\.address) == ["127.0.0.2:\(upstream.port)"], "re-resolved: \(status.clusters[0].upstreams)")
            #expect(status.clusters[0].upstreams.first?.hostname == hosts.name)
            try hosts.set(nil)
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"dns_failed\"") == 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"dns_failed\"") >= 1)
            #expect(controller.config.clusters[0].upstreams.map { "\($0.address)" } == ["127.0.0.2:\(upstream.port)"], "a failed refresh keeps the addresses")
        }
    }

    @Test("a name that does not resolve is a located error at check time")
    func unresolvableName() {
        let yaml = "clusters:\n  - name: b\n    upstreams:\n      - strait-no-such-name.invalid:80\nlisteners:\n  - { bind: 127.0.0.1:6000, cluster: b }\n"
        do {
            _ = try ProxyConfigLoader.check(yaml, file: "dns.yaml")
            Issue.record("accepted")
        } catch {
            #expect(error.errors.count == 1)
            #expect(error.errors[0].line == 4 && error.errors[0].column == 9, "\(error)")
            #expect(error.errors[0].message.contains("does not resolve"), "\(error)")
        }
        #expect(throws: ProxyConfigError.self) { try ProxyConfigLoader.parse(bytes: Array("clusters:\n  - name: b\n    upstreams: [example.test:80]\nlisteners:\n  - { bind: 127.0.0.1:6000, cluster: b }\n".utf8), file: "f", resolvingNames: false) }
    }
}

@Suite("Access log off the loop thread")
struct AccessLogTests {
    static func entry(_ index: Int) -> AccessEntry {
        AccessEntry(time: 1, listener: "web", client: "198.18.0.1:\(index)", upstream: "198.18.0.2:80", datapath: "copy", bytesUp: 1, bytesDown: 2, durationSeconds: 0.5, end: "completed")
    }

    @Test("access_log_file gets one JSON object per connection, relayed for real")
    func jsonLines() async throws {
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            var config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
            config.accessLogFile = folder + "/access.jsonl"
            try await ProxyHarness.with(config) { proxy, port in
                for _ in 0..<3 {
                    let client = try connectClient(port: port)
                    try client.sendAll([1, 2, 3])
                    _ = try client.receive(exactly: 3)
                    client.close()
                }
                for _ in 0..<200 where proxy.activeConnections > 0 { try await Task.sleep(for: .milliseconds(10)) }
            }
            let lines = try String(contentsOfFile: folder + "/access.jsonl", encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 3, "\(lines)")
            for line in lines {
                let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                #expect(object["listener"] as? String == "test" && object["bytes_up"] as? Int == 3 && object["end"] as? String == "completed", "\(line)")
            }
        }
    }

    @Test("a writer that cannot keep up drops lines and counts them; record never waits")
    func dropsWhenFull() async throws {
        try await withTestFolder { folder in
            let fifo = folder + "/stalled"
            #expect(mkfifo(fifo, 0o600) == 0)
            // A reader that reads nothing yet: the writer blocks once the pipe holds 64 KiB.
            let reader = open(fifo, O_RDONLY | O_NONBLOCK)
            #expect(reader >= 0)
            defer { close(reader) }
            let metrics = ProxyMetrics()
            let log = try AccessLog(path: fifo, logger: ProxyHarness.logger, metrics: metrics)
            let started = ContinuousClock.now
            for index in 0..<(AccessLog.capacity * 4) { log.record(Self.entry(index)) }
            #expect(ContinuousClock.now - started < .seconds(10), "record does not wait for the writer")
            let dropped = log.dropped.load(ordering: .relaxed)
            #expect(dropped > 0, "lines beyond the queue were dropped")
            #expect(metrics.exposition().contains("strait_proxy_errors_total{kind=\"access_log_dropped\"} \(dropped)"))
            // Drain the pipe so the writer can finish what it holds, then stop it.
            let stopped = DispatchSemaphore(value: 0)
            let stopper = Thread {
                log.stop()
                stopped.signal()
            }
            stopper.start()
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            var lines = 0
            var done = false
            let deadline = ContinuousClock.now + .seconds(30)
            while !done && ContinuousClock.now < deadline {
                let count = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if count > 0 { lines += buffer[..<count].filter { $0 == UInt8(ascii: "\n") }.count } else { usleep(1000) }
                done = stopped.wait(timeout: .now()) == .success
            }
            while case let count = buffer.withUnsafeMutableBytes({ read(reader, $0.baseAddress, $0.count) }), count > 0 {
                lines += buffer[..<count].filter { $0 == UInt8(ascii: "\n") }.count
            }
            #expect(done, "the writer finished once the pipe was read")
            #expect(lines + dropped == AccessLog.capacity * 4, "every line written or counted as dropped: \(lines) + \(dropped)")
        }
    }
}
