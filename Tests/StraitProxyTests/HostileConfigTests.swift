import Foundation
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Synchronization
import Testing

/// Files a hostile or careless user writes: none may crash the checker or a running proxy, each
/// gets an error at its line and column that never echoes raw control bytes.
@Suite("Configuration: hostile input")
struct HostileConfigTests {
    static let head = "clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n"

    func problem(_ yaml: String) -> ProxyConfigError? {
        do {
            _ = try ProxyConfigLoader.parse(yaml, file: "hostile.yaml")
            return nil
        } catch {
            return error
        }
    }

    @Test("durations that overflow, are not numbers, or are out of range are refused at their position", arguments: [
        "connect_timeout: 1e10h", "connect_timeout: infs", "connect_timeout: inf", "connect_timeout: nan", "idle_timeout: 1e12h",
        "connect_timeout: -1s", "connect_timeout: 0x10s", "connect_timeout: 0.0000000001s", "idle_timeout: 8785h",
        "connect_timeout: 0s", "connect_timeout: 99999999999999999999h", "connect_timeout: 1.s", "connect_timeout: .5s", "connect_timeout: ١s",
    ])
    func badDurations(field: String) throws {
        let error = try #require(problem(Self.head + "    " + field + "\n"))
        #expect(error.line == 7, "\(error)")
        #expect(error.column > 5, "\(error)")
        #expect(error.message.contains("connect_timeout") || error.message.contains("idle_timeout"), "\(error)")
    }

    @Test("drain_timeout: inf is refused; 0 and fractions are exact")
    func drainTimeout() throws {
        #expect(problem(Self.head + "drain_timeout: inf\n")?.line == 7)
        #expect(try ProxyConfigLoader.parse(Self.head + "drain_timeout: 0\n", file: "f").drainTimeout == .zero)
        #expect(try ProxyConfigLoader.parse(Self.head + "drain_timeout: 1.25s\n", file: "f").drainTimeout == .milliseconds(1250))
        #expect(try ProxyConfigLoader.parse(Self.head + "drain_timeout: 0.5m\n", file: "f").drainTimeout == .seconds(30))
        #expect(try ProxyConfigLoader.parse(Self.head + "drain_timeout: 8784h\n", file: "f").drainTimeout == .seconds(8784 * 3600))
    }

    @Test("5,000 nested flow sequences or mappings, and deep block nesting, are refused before Yams builds a tree", arguments: [
        String(repeating: "[", count: 5000),
        String(repeating: "{a: ", count: 5000),
        "listeners: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000),
        String(repeating: "- ", count: 5000) + "x",
        (0..<3000).map { String(repeating: " ", count: $0) + "k\($0):" }.joined(separator: "\n"),
    ])
    func deepNesting(yaml: String) throws {
        let error = try #require(problem(yaml))
        #expect(error.message.contains("nested more than \(ConfigText.maximumDepth) levels"), "\(error)")
        #expect(error.line >= 1 && error.column >= 1)
    }

    @Test("nesting at the bound reaches the schema check, even on a thread with a 256 KiB stack")
    func depthAtTheBoundOnASmallStack() throws {
        let yaml = "listeners: " + String(repeating: "[", count: ConfigText.maximumDepth - 1) + String(repeating: "]", count: ConfigText.maximumDepth - 1) + "\n"
        let result = Mutex<ProxyConfigError?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            result.withLock { $0 = self.problem(yaml) }
            done.signal()
        }
        thread.stackSize = 256 << 10
        thread.start()
        done.wait()
        let error = try #require(result.withLock { $0 })
        #expect(!error.message.contains("nested"), "\(error)")
    }

    @Test("a second key of the same name is an error, at the second key")
    func duplicateKeys() throws {
        let error = try #require(problem(Self.head + "    cluster: b\n"))
        #expect(error.line == 7 && error.column == 5)
        #expect(error.message.contains("a second `cluster` key"))
        #expect(problem("clusters: []\n" + Self.head)?.message.contains("a second `clusters` key") == true)
    }

    @Test("a metrics address equal to a listener's, or overlapping wildcards, are refused as the proxy's bind would", arguments: [
        (Self.head + "metrics: 127.0.0.1:6000\n", 7, "`metrics` binds 127.0.0.1:6000"),
        (Self.head + "  - bind: 0.0.0.0:6000\n    cluster: b\n", 7, "collides with listener `listener0`"),
        (Self.head + "  - bind: 127.0.0.1:6000\n    cluster: b\n", 7, "as listener `listener0`"),
        (Self.head + "metrics: 0.0.0.0:6000\n", 7, "collides"),
    ])
    func bindConflicts(yaml: String, line: Int, expected: String) throws {
        let error = try #require(problem(yaml))
        #expect(error.line == line, "\(error)")
        #expect(error.message.contains(expected), "\(error)")
    }

    @Test("bind conflicts by family: [::] takes IPv4 only when dual-stack; port 0 never collides")
    func bindConflictRules() {
        func config(_ addresses: [String]) -> ProxyConfig {
            ProxyConfig(
                listeners: addresses.enumerated().map { ListenerConfig(name: "l\($0.offset)", address: SocketAddress(parsing: $0.element)!, cluster: "c") },
                clusters: [ClusterConfig(name: "c", upstreams: [UpstreamConfig(address: SocketAddress(parsing: "127.0.0.1:1")!)])])
        }
        #expect(throws: ProxyConfigProblem.self) { try config(["[::]:7000", "127.0.0.1:7000"]).validate(dualStack: true) }
        #expect(throws: Never.self) { try config(["[::]:7000", "127.0.0.1:7000"]).validate(dualStack: false) }
        #expect(throws: ProxyConfigProblem.self) { try config(["[::1]:7000", "[::]:7000"]).validate(dualStack: false) }
        #expect(throws: ProxyConfigProblem.self) { try config(["127.0.0.1:7000", "[::]:7000"]).validate(dualStack: true) }
        #expect(throws: Never.self) { try config(["127.0.0.1:7000", "127.0.0.2:7000", "[::1]:7000", "127.0.0.1:7001"]).validate(dualStack: true) }
        #expect(throws: Never.self) { try config(["127.0.0.1:0", "127.0.0.1:0", "0.0.0.0:0"]).validate(dualStack: true) }
    }

    @Test("an unbracketed IPv6 host:port is refused as ambiguous; quoted brackets work; unquoted brackets get advice")
    func ipv6Addresses() throws {
        #expect(SocketAddress(parsing: "::1:19001") == nil)
        #expect(SocketAddress(parsing: "[1.2.3.4]:80") == nil)
        #expect(SocketAddress(parsing: "127.0.0.1:+80") == nil)
        let ambiguous = try #require(problem(Self.head + "  - bind: ::1:19001\n    cluster: b\n"))
        #expect(ambiguous.line == 7 && ambiguous.message.contains("in brackets"), "\(ambiguous)")
        let quoted = try ProxyConfigLoader.parse(Self.head + "  - bind: \"[::1]:19001\"\n    cluster: b\n", file: "f")
        #expect(quoted.listeners[1].address == .ip(IPAddress("::1")!, port: 19001))
        let unquoted = try #require(problem(Self.head + "  - bind: [::1]:19001\n    cluster: b\n"))
        #expect(unquoted.line == 7 && unquoted.message.contains("must be quoted"), "\(unquoted)")
    }

    @Test("a UTF-8 byte-order mark is accepted; CRLF line ends too")
    func byteOrderMark() throws {
        let config = try ProxyConfigLoader.parse(bytes: [0xEF, 0xBB, 0xBF] + Array(Self.head.utf8), file: "bom.yaml")
        #expect(config.listeners.count == 1)
        #expect(try ProxyConfigLoader.parse(bytes: Array(Self.head.replacingOccurrences(of: "\n", with: "\r\n").utf8), file: "crlf.yaml").listeners.count == 1)
    }

    @Test("binary input and control characters are refused at their position, and never echoed raw", arguments: [
        Array(Self.head.utf8) + [0x00, 0x01, 0x02],
        Array(Self.head.utf8) + Array("    name: \"\u{1B}[31mred\"\n".utf8),
        Array(Self.head.utf8) + [0xFF, 0xFE, 0x41],
        [0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x01, 0x00],
    ])
    func binaryInput(bytes: [UInt8]) throws {
        do {
            _ = try ProxyConfigLoader.parse(bytes: bytes, file: "bin\u{7}.yaml")
            Issue.record("accepted")
        } catch {
            #expect(error.line >= 1, "\(error)")
            #expect(!error.description.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "\(error.description.debugDescription)")
            #expect(error.description.hasPrefix("bin\\u{7}.yaml:"))
        }
    }

    @Test("a control character that YAML escapes produce is escaped in the message and refused in a name")
    func escapedControlInName() throws {
        let error = try #require(problem(Self.head + "    name: \"a\\nforged line\"\n"))
        #expect(error.message.contains("a\\nforged line"), "\(error)")
        #expect(!error.message.contains("\n"))
        #expect(error.line == 7)
        let unknownKey = try #require(problem(Self.head + "    \"\\e[2J\": 1\n"))
        #expect(!unknownKey.description.contains("\u{1B}"), "\(unknownKey)")
    }

    @Test("an unreadable or missing file reports the errno")
    func unreadable() throws {
        do {
            _ = try ProxyConfigLoader.load(path: "/nonexistent/strait-sprx.yaml")
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("No such file or directory (errno 2)"), "\(error)")
        }
        do {
            _ = try ProxyConfigLoader.load(path: "/proc/self")
            Issue.record("accepted a directory")
        } catch {
            #expect(error.message.contains("errno 21"), "\(error)")
        }
    }

    @Test("a file over the size bound is refused without parsing it")
    func oversized() throws {
        do {
            _ = try ProxyConfigLoader.parse(bytes: [UInt8](repeating: 0x20, count: ConfigText.maximumBytes + 1), file: "big")
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("larger than 16 MiB"))
        }
    }

    @Test("a 60,000-listener file checks (duplicate and bind-conflict checks are linear)")
    func sixtyThousandListeners() throws {
        var lines = ["clusters:", "  - name: b", "    upstreams: [127.0.0.1:1]", "listeners:"]
        for index in 0..<60_000 {
            lines.append("  - { name: l\(index), bind: \"127.\(index / 250 / 250).\(index / 250 % 250).\(index % 250 + 1):\(6000 + index % 50_000)\", cluster: b }")
        }
        let config = try ProxyConfigLoader.parse(lines.joined(separator: "\n") + "\n", file: "big.yaml")
        #expect(config.listeners.count == 60_000)
        var duplicate = lines
        duplicate.append("  - { name: l59999, bind: \"127.0.0.1:1\", cluster: b }")
        #expect(problem(duplicate.joined(separator: "\n") + "\n")?.message.contains("a second listener named `l59999`") == true)
    }
}

@Suite("Reload: a hostile file leaves the running proxy serving", .serialized)
struct HostileReloadTests {
    @Test("reload(fromFile:) of overflowing durations, deep nesting, binary bytes or a missing file throws; the proxy keeps relaying")
    func hostileReload() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
        try await ProxyHarness.with(config) { proxy, port in
            let open = try connectClient(port: port)
            try open.sendAll(Array("before".utf8))
            #expect(try open.receive(exactly: 6) == Array("before".utf8))
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("strait-hostile-\(getpid())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let bind = "    bind: 127.0.0.1:\(port)\n"
            let head = "clusters:\n  - name: backend\n    upstreams: [\(upstream.address)]\nlisteners:\n  - name: test\n    cluster: backend\n" + bind
            let files: [(String, [UInt8])] = [
                ("connect.yaml", Array((head + "    connect_timeout: 1e10h\n").utf8)),
                ("infs.yaml", Array((head + "    connect_timeout: infs\n").utf8)),
                ("idle.yaml", Array((head + "    idle_timeout: 1e12h\n").utf8)),
                ("drain.yaml", Array((head + "drain_timeout: inf\n").utf8)),
                ("deep.yaml", Array(String(repeating: "[", count: 5000).utf8)),
                ("binary.yaml", [0x7F, 0x45, 0x4C, 0x46, 0x00, 0x00, 0x01]),
                ("clash.yaml", Array((head + "metrics: 127.0.0.1:\(port)\n").utf8)),
            ]
            for (name, bytes) in files {
                let path = directory.appendingPathComponent(name).path
                try Data(bytes).write(to: URL(fileURLWithPath: path))
                #expect(throws: ProxyError.self, "\(name)") { try proxy.reload(fromFile: path) }
            }
            #expect(throws: ProxyError.self) { try proxy.reload(fromFile: directory.appendingPathComponent("missing.yaml").path) }
            try open.sendAll(Array("after".utf8))
            #expect(try open.receive(exactly: 5) == Array("after".utf8), "the open connection survived every rejected reload")
            let fresh = try connectClient(port: port)
            try fresh.sendAll(Array("new".utf8))
            #expect(try fresh.receive(exactly: 3) == Array("new".utf8), "new connections are still accepted")
            let good = directory.appendingPathComponent("good.yaml").path
            try Data((head + "    connect_timeout: 2.5s\n").utf8).write(to: URL(fileURLWithPath: good))
            #expect(try proxy.reload(fromFile: good).listeners[0].connectTimeout == .milliseconds(2500))
            open.close()
            fresh.close()
        }
    }
}

@Suite("Reload: SIGHUP with a hostile file, in a real proxy process", .serialized)
struct HostileSignalReloadTests {
    @Test("the process survives SIGHUP with overflowing durations, deep nesting and binary bytes, keeps its connection and accepts new ones")
    func sighup() throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-sighup")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let configFile = folder + "/strait.yaml", pidFile = folder + "/proxy.pid"
        let port = try TestListener(.ipv4).port
        let good = "clusters:\n  - name: b\n    upstreams: [\"\(upstream.address)\"]\nlisteners:\n  - name: web\n    bind: 127.0.0.1:\(port)\n    cluster: b\n    datapath: copy\n"
        try Data(good.utf8).write(to: URL(fileURLWithPath: configFile))

        let proxy = Process()
        proxy.executableURL = URL(fileURLWithPath: binary)
        proxy.arguments = ["proxy", "--config", configFile, "--pid-file", pidFile, "--handover-socket", folder + "/handover.sock", "--log-level", "critical"]
        try proxy.run()
        defer {
            if proxy.isRunning { proxy.terminate() }
            proxy.waitUntilExit()
        }
        var ready = false
        for _ in 0..<200 where !ready {
            ready = (try? connectClient(port: port, timeoutSeconds: 2)) != nil && FileManager.default.fileExists(atPath: pidFile)
            if !ready { usleep(20_000) }
        }
        try #require(ready, "the proxy did not start listening")
        let open = try connectClient(port: port)
        defer { open.close() }

        let hostile: [[UInt8]] = [
            Array((good + "    connect_timeout: 1e10h\n").utf8),
            Array((good + "    idle_timeout: 1e12h\n").utf8),
            Array((good + "drain_timeout: inf\n").utf8),
            Array(String(repeating: "[", count: 5000).utf8),
            [0x7F, 0x45, 0x4C, 0x46, 0x00, 0x01, 0x02],
        ]
        for (index, bytes) in hostile.enumerated() {
            try Data(bytes).write(to: URL(fileURLWithPath: configFile))
            kill(proxy.processIdentifier, SIGHUP)
            usleep(300_000)
            #expect(proxy.isRunning, "file \(index): the proxy died on reload")
            let message = Array("after reload \(index)".utf8)
            try open.sendAll(message)
            #expect(try open.receive(exactly: message.count) == message, "file \(index): the open connection survived")
            let fresh = try connectClient(port: port)
            try fresh.sendAll(Array("new".utf8))
            #expect(try fresh.receive(exactly: 3) == Array("new".utf8), "file \(index): new connections are accepted")
            fresh.close()
        }
        open.close()
        kill(proxy.processIdentifier, SIGTERM)
        proxy.waitUntilExit()
        #expect(proxy.terminationReason == .exit && proxy.terminationStatus == 0, "a clean drain, not a crash")
        #expect(!FileManager.default.fileExists(atPath: pidFile), "the pid file is removed")
    }
}
