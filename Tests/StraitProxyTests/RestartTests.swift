import Atomics
import Foundation
import StraitBench
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Synchronization
import Testing

/// A `strait proxy` process tree started by a test: the first process (inside `namespace` when
/// given) and its successors, with the config, pid file, hand-over socket and one shared log in
/// a private folder.
final class ProxyProcess: @unchecked Sendable {
    let binary: String
    let folder: String
    var pidFile: String { folder + "/proxy.pid" }
    var handOver: String { folder + "/handover.sock" }
    var configFile: String { folder + "/strait.yaml" }
    var logFile: String { folder + "/proxy.log" }
    /// The control socket `strait proxy` puts beside the hand-over socket by default.
    var controlSocket: String { handOver + ".control" }
    let first = Process()

    init(binary: String, folder: String, config: String, namespace: NetworkNamespace?, logLevel: String = "warning") throws {
        self.binary = binary
        self.folder = folder
        try config.write(toFile: configFile, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: logFile, contents: nil)
        let command = [binary, "proxy", "--config", configFile, "--pid-file", pidFile, "--handover-socket", handOver, "--log-level", logLevel]
        first.executableURL = URL(fileURLWithPath: namespace == nil ? binary : "/usr/sbin/ip")
        first.arguments = namespace.map { ["netns", "exec", $0.name] + command } ?? Array(command.dropFirst())
        first.standardOutput = FileHandle.nullDevice
        first.standardError = FileHandle(forWritingAtPath: logFile)
        try first.run()
    }

    /// The pid the pid file names now.
    var currentPid: pid_t? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Waits until the pid file names the process offering at the hand-over socket; that pid.
    func waitReady(seconds: Double = 15) -> pid_t? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let pid = currentPid, (try? ListenerHandOver.owner(of: handOver)) == pid { return pid }
            usleep(10_000)
        }
        return nil
    }

    /// `strait proxy restart`, to completion.
    func restart(timeout: Double = 15) throws -> (status: Int32, output: String) {
        try StraitProcesses.run([binary, "proxy", "restart", "--pid-file", pidFile, "--handover-socket", handOver, "--timeout", "\(timeout)"], timeout: timeout + 5)
    }

    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Stops whichever process is current (SIGTERM), then the first one if it still runs.
    func stop() {
        if let pid = currentPid {
            kill(pid, SIGTERM)
            _ = StraitProcesses.waitForExit(pid, seconds: 10)
        }
        if first.isRunning { first.terminate() }
        first.waitUntilExit()
        // Any generation still alive (a successor a failed restart left behind) is found by its
        // command line, which names this test's folder, and killed.
        let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for name in processes {
            guard let pid = pid_t(name), pid != getpid(),
                let command = try? String(contentsOfFile: "/proc/\(name)/cmdline", encoding: .utf8),
                command.contains(pidFile)
            else { continue }
            kill(pid, SIGKILL)
        }
    }

    /// Every live generation of this test's proxy (found by its command line): pid, parent, each
    /// thread's name and kernel wait channel, the sockets it holds; then the hand-over path's
    /// listening sockets as `ss` sees them (accept queue in Recv-Q). For a failure message.
    func generations() -> String {
        var lines: [String] = []
        var anyPid: pid_t?
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(name), pid != getpid(),
                let command = try? String(contentsOfFile: "/proc/\(name)/cmdline", encoding: .utf8), command.contains(pidFile)
            else { continue }
            anyPid = pid
            let status = (try? String(contentsOfFile: "/proc/\(name)/status", encoding: .utf8)) ?? ""
            let parent = status.split(separator: "\n").first { $0.hasPrefix("PPid:") } ?? ""
            var threads: [String] = []
            for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(name)/task")) ?? [] {
                let comm = ((try? String(contentsOfFile: "/proc/\(name)/task/\(task)/comm", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
                let wchan = (try? String(contentsOfFile: "/proc/\(name)/task/\(task)/wchan", encoding: .utf8)) ?? "?"
                threads.append("\(comm)@\(wchan)")
            }
            var sockets: [String] = []
            for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(name)/fd")) ?? [] {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(name)/fd/\(fd)"), target.hasPrefix("socket:") {
                    sockets.append("\(fd)=\(target.dropFirst(7))")
                }
            }
            lines.append("pid \(pid) \(parent) \(command.contains("--take-over") ? "successor" : "first") threads [\(threads.sorted().joined(separator: " "))] sockets [\(sockets.joined(separator: " "))]")
        }
        if let anyPid, let ss = try? StraitProcesses.run(["/usr/bin/nsenter", "-t", "\(anyPid)", "-n", "ss", "-xlpn"], timeout: 5) {
            lines += ss.output.split(separator: "\n").filter { $0.contains(handOver) }.map(String.init)
        }
        return lines.joined(separator: "\n")
    }

    /// A configuration of one copy listener on `port` to `upstream`, optionally with metrics and a
    /// second listener.
    static func config(port: UInt16, upstream: UInt16, metrics: UInt16? = nil, secondListener: UInt16? = nil) -> String {
        var text = """
            listeners:
              - name: web
                bind: 127.0.0.1:\(port)
                cluster: backend
                datapath: copy

            """
        if let secondListener {
            text += """
                  - name: extra
                    bind: 127.0.0.1:\(secondListener)
                    cluster: backend
                    datapath: copy

                """
        }
        text += """
            clusters:
              - name: backend
                upstreams:
                  - 127.0.0.1:\(upstream)
            drain_timeout: 2s
            access_log: false

            """
        if let metrics { text += "metrics: 127.0.0.1:\(metrics)\n" }
        return text
    }
}

/// A private folder for one test's files, removed afterwards.
func withTestFolder<T>(_ body: (String) async throws -> T) async throws -> T {
    let folder = "/tmp/" + uniqueTestName("strait-restart")
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    return try await body(folder)
}

/// Two free ports of the calling thread's namespace: bound together by the kernel, then released.
func twoFreePorts() throws -> (UInt16, UInt16) {
    let a = try TestListener(.ipv4), b = try TestListener(.ipv4)
    return (a.port, b.port)
}

/// Tests that make a network namespace, load the proxy's kernel programs or signal processes: root.
private let namespaceGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// `strait proxy restart` with real processes: the `strait` binary built beside this test bundle.
@Suite("proxy: restart in place under load", .serialized)
struct RestartTests {
    @Test("three restarts while clients connect continuously: no connection refused, reset or lost",
          arguments: ["copy", "splice"])
    func restartUnderLoad(datapath: String) async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            let port = try TestListener(.ipv4).port  // bound and released: free, and never in TIME_WAIT
            let proxy = try ProxyProcess(
                binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port).replacingOccurrences(of: "datapath: copy", with: "datapath: \(datapath)"),
                namespace: nil)
            defer { proxy.stop() }
            try #require(proxy.waitReady() != nil, "the proxy did not start: \(proxy.log)")

            let stop = Atomic<Bool>(false)
            let completed = Atomic<Int>(0)
            let failures = Mutex<[String]>([])
            let client = Thread {
                let message = Array("ping through the restart".utf8)
                while !stop.load(ordering: .relaxed) {
                    do {
                        let socket = try connectClient(port: port, timeoutSeconds: 5)
                        try socket.sendAll(message)
                        let reply = try socket.receive(exactly: message.count)
                        if reply != message { failures.withLock { $0.append("short or wrong reply: \(reply.count) bytes") } }
                        socket.close()
                        completed.add(1, ordering: .relaxed)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
            }
            client.start()
            var pids: [pid_t] = []
            for _ in 0..<3 {
                usleep(400_000)
                let restart = try proxy.restart()
                #expect(restart.status == 0, "strait proxy restart: \(restart.output)")
                if let pid = proxy.currentPid { pids.append(pid) }
            }
            usleep(400_000)
            stop.store(true, ordering: .relaxed)
            while !client.isFinished { usleep(10_000) }

            #expect(Set(pids).count == 3, "each restart started a new process: \(pids)")
            #expect(completed.load(ordering: .relaxed) > 100, "load ran through the restarts")
            let seen = failures.withLock { $0 }
            #expect(seen.isEmpty, "\(seen.count) failed connections, first: \(seen.prefix(3))")
        }
    }

    @Test("20 back-to-back restarts with metrics configured, 2,000 connections/s, in a namespace a drill churned: no failure, every old process exits",
          namespaceGate)
    func backToBackWithMetrics() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            try await TestNamespace.with { namespace in
                // Tens of thousands of short client connections first: their local ports (and
                // TIME_WAIT sockets) spread over the namespace's ephemeral range.
                let churn = try await RestartDrill.run(mode: .closeAndBind, restarts: 5, connectionsPerSecond: 2000, namespace: namespace, controlDirectory: folder)
                #expect(churn.attempted > 100, "the drill churned the namespace: \(churn)")
                let upstream = try namespace.run { try ThreadedUpstream(echoHandler) }
                defer { upstream.stop() }
                let (port, metricsPort) = try namespace.run { try twoFreePorts() }
                let proxy = try ProxyProcess(
                    binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port, metrics: metricsPort), namespace: namespace,
                    logLevel: "notice")
                defer { proxy.stop() }
                let firstPid = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")

                let load = ClientLoad(port: port, rate: 2000, threads: 2)
                let loadDone = ManagedAtomic<Bool>(false)
                Thread.detachNewThread {
                    _ = try? namespace.run { load.run() }
                    loadDone.store(true, ordering: .releasing)
                }
                var pids = [firstPid]
                var failedRestart: String?
                usleep(100_000)
                var seconds: [Double] = []
                for index in 0..<20 {
                    let started = Date()
                    let restart = try proxy.restart()
                    seconds.append(Date().timeIntervalSince(started))
                    guard restart.status == 0, let pid = proxy.currentPid else {
                        failedRestart = "restart \(index + 1): \(restart.output)\n\(proxy.generations())\n\(proxy.log.suffix(3000))"
                        break
                    }
                    pids.append(pid)
                }
                print("20 proxy restarts: slowest \(String(format: "%.2f", seconds.max() ?? 0)) s, median \(String(format: "%.2f", seconds.sorted()[seconds.count / 2])) s")
                usleep(100_000)
                load.stop()
                while !loadDone.load(ordering: .acquiring) { usleep(5000) }

                let scrape = try namespace.run { () -> String in
                    let socket = try connectClient(port: metricsPort, timeoutSeconds: 5)
                    try socket.sendAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                    return String(decoding: try socket.receiveToEnd(), as: UTF8.self)
                }
                #expect(scrape.hasPrefix("HTTP/1.1 200"), "the last proxy serves /metrics on the inherited listener")
                #expect(failedRestart == nil, "\(failedRestart ?? "")")
                #expect(Set(pids).count == pids.count && pids.count == 21, "each restart started a new process: \(pids)")
                let attempted = load.attempted.load(ordering: .relaxed)
                #expect(attempted > 200, "load ran through the restarts: \(attempted)")
                #expect(load.failedConnects.load(ordering: .relaxed) == 0, "failed connects of \(attempted)")
                #expect(load.resets.load(ordering: .relaxed) == 0, "resets of \(attempted)")
                for pid in pids.dropLast() {
                    #expect(StraitProcesses.waitForExit(pid, seconds: 30), "replaced process \(pid) exited by itself")
                }
            }
        }
    }

    @Test("a restart whose successor fails (bad config, then a port taken) is reported at once and leaves the old proxy serving; the next restart succeeds",
          namespaceGate)
    func failedSuccessorKeepsOld() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            try await TestNamespace.with { namespace in
                let upstream = try namespace.run { try ThreadedUpstream(echoHandler) }
                defer { upstream.stop() }
                let (port, metricsPort) = try namespace.run { try twoFreePorts() }
                let taken = try namespace.run { try TestListener(.ipv4) }  // held by the test all along
                let good = ProxyProcess.config(port: port, upstream: upstream.port, metrics: metricsPort)
                let proxy = try ProxyProcess(binary: binary, folder: folder, config: good, namespace: namespace)
                defer { proxy.stop() }
                let old = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
                func serves() throws -> Bool {
                    try namespace.run {
                        let socket = try connectClient(port: port, timeoutSeconds: 5)
                        try socket.sendAll(Array("hello".utf8))
                        return try socket.receive(exactly: 5) == Array("hello".utf8)
                    }
                }
                for broken in ["listeners: [\n", ProxyProcess.config(port: port, upstream: upstream.port, metrics: metricsPort, secondListener: taken.port)] {
                    try broken.write(toFile: proxy.configFile, atomically: true, encoding: .utf8)
                    // A long timeout: the successor's exit must be reported as it happens, not when the wait ends.
                    let restart = try proxy.restart(timeout: 60)
                    #expect(restart.status != 0, "the restart reports the failure: \(restart.output)")
                    #expect(restart.output.contains("exited with status 1 before taking over"), "reported when the successor exited: \(restart.output)")
                    #expect(proxy.currentPid == old && !StraitProcesses.hasExited(old), "the old proxy still runs and owns the pid file")
                    #expect(try serves(), "the old proxy still serves")
                    #expect(try ListenerHandOver.owner(of: proxy.handOver) == old, "the old proxy still offers")
                }
                try good.write(toFile: proxy.configFile, atomically: true, encoding: .utf8)
                let restart = try proxy.restart()
                #expect(restart.status == 0, "\(restart.output)\n\(proxy.log.suffix(1500))")
                let new = try #require(proxy.currentPid)
                #expect(new != old)
                #expect(try serves())
                #expect(StraitProcesses.waitForExit(old, seconds: 30), "the old proxy exited by itself")
                _ = taken
            }
        }
    }

    @Test("HUP and TERM at once, in either order: every signal is handled, and the proxy stops", namespaceGate, arguments: [true, false])
    func terminateRightAfterHangUp(hangUpFirst: Bool) async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            let port = try TestListener(.ipv4).port
            let proxy = try ProxyProcess(binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port), namespace: nil, logLevel: "info")
            defer { proxy.stop() }
            let pid = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
            // Two signals sent back to back may reach two of the proxy's threads in either order; whichever
            // comes first, TERM must not be lost behind HUP (one pending slot used to keep only the last).
            for signal in hangUpFirst ? [SIGHUP, SIGTERM] : [SIGTERM, SIGHUP] { kill(pid, signal) }
            #expect(StraitProcesses.waitForExit(pid, seconds: 30), "TERM was honoured: \(proxy.log.suffix(1500))")
            #expect(proxy.log.contains("stopped"), "the proxy drained and stopped")
        }
    }

    @Test("a pid file naming an unrelated process is refused without signalling it, by reload and by restart", namespaceGate)
    func stalePidFileRefused() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            let port = try TestListener(.ipv4).port
            let proxy = try ProxyProcess(binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port), namespace: nil)
            defer { proxy.stop() }
            let running = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
            let sleeper = Process()
            sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
            sleeper.arguments = ["60"]
            try sleeper.run()
            defer { kill(sleeper.processIdentifier, SIGKILL); sleeper.waitUntilExit() }
            let stale = folder + "/stale.pid"
            try "\(sleeper.processIdentifier)\n".write(toFile: stale, atomically: true, encoding: .utf8)
            // With a live proxy on the socket (a different pid), and with nothing offering there.
            for socket in [proxy.handOver, folder + "/nothing.sock"] {
                for command in ["reload", "restart"] {
                    let result = try StraitProcesses.run([binary, "proxy", command, "--pid-file", stale, "--handover-socket", socket])
                    #expect(result.status != 0, "\(command) refused: \(result.output)")
                    #expect(result.output.contains("not signalling"), "\(result.output)")
                }
            }
            usleep(100_000)
            // A launcher's blocked mask may hold a signal pending rather than deliver it: none may be pending either.
            let status = (try? String(contentsOfFile: "/proc/\(sleeper.processIdentifier)/status", encoding: .utf8)) ?? ""
            let pending = status.split(separator: "\n").filter { $0.hasPrefix("SigPnd:") || $0.hasPrefix("ShdPnd:") }
            #expect(pending.count == 2 && pending.allSatisfy { $0.hasSuffix("0000000000000000") }, "no signal pending: \(pending)")
            #expect(sleeper.isRunning && !StraitProcesses.hasExited(sleeper.processIdentifier), "the sleep was never signalled")
            #expect(proxy.currentPid == running, "the proxy was not restarted")
        }
    }

    @Test("the control socket travels in a restart: same inode, the successor answers, a client polling `status` is never refused")
    func controlSocketTravels() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            let port = try TestListener(.ipv4).port
            let proxy = try ProxyProcess(binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port), namespace: nil)
            defer { proxy.stop() }
            var previous = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
            func inode() -> ino_t? {
                var info = stat()
                return stat(proxy.controlSocket, &info) == 0 ? info.st_ino : nil
            }
            let before = try #require(inode(), "no control socket at \(proxy.controlSocket)")
            struct Answer: Decodable { var pid: pid_t }

            // A client asking `status` over and over (bounded to 60 s) while the processes change places.
            let stop = Atomic<Bool>(false)
            let answered = Atomic<Int>(0)
            let failures = Mutex<[String]>([])
            let path = proxy.controlSocket
            let poller = Thread {
                let deadline = Date().addingTimeInterval(60)
                while !stop.load(ordering: .relaxed) && Date() < deadline {
                    do {
                        _ = try JSONDecoder().decode(Answer.self, from: ControlSocket.send("status", to: path, timeout: .seconds(5)))
                        answered.add(1, ordering: .relaxed)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                    usleep(2_000)
                }
            }
            poller.start()
            for round in 1...3 {
                let restart = try proxy.restart()
                #expect(restart.status == 0, "restart \(round): \(restart.output)\n\(proxy.log)")
                let current = try #require(proxy.currentPid)
                #expect(current != previous, "restart \(round) started a new process")
                #expect(inode() == before, "restart \(round): the control socket was bound anew instead of handed over")
                let status = try StraitProcesses.run([binary, "proxy", "status", "--json", "--handover-socket", proxy.handOver], timeout: 10)
                #expect(status.status == 0, "status after restart \(round): \(status.output)")
                let pid = try? JSONDecoder().decode(Answer.self, from: Data(status.output.utf8)).pid
                #expect(pid == current, "restart \(round): `status` answered by \(pid.map(String.init) ?? "nobody"), the successor is \(current): \(status.output)")
                // The old process drains and exits without removing the path it handed over.
                #expect(StraitProcesses.waitForExit(previous, seconds: 10), "process \(previous) did not exit after handing over")
                #expect(inode() == before, "restart \(round): the old process removed or replaced the control socket on its way out")
                previous = current
            }
            stop.store(true, ordering: .relaxed)
            while !poller.isFinished { usleep(10_000) }
            let seen = failures.withLock { $0 }
            #expect(seen.isEmpty, "\(seen.count) control requests failed, first: \(seen.prefix(3))")
            #expect(answered.load(ordering: .relaxed) > 10, "the poller ran through the restarts")
        }
    }

    @Test("a second proxy on the same hand-over socket is refused before it binds; the first keeps it", namespaceGate)
    func secondProxyOnHandOverRefused() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            let (port, otherPort) = try twoFreePorts()
            let proxy = try ProxyProcess(binary: binary, folder: folder, config: ProxyProcess.config(port: port, upstream: upstream.port), namespace: nil)
            defer { proxy.stop() }
            let first = try #require(proxy.waitReady(), "the proxy did not start: \(proxy.log)")
            let second = try StraitProcesses.run([
                binary, "proxy", "--listen", "127.0.0.1:\(otherPort)", "--upstream", "127.0.0.1:\(upstream.port)",
                "--pid-file", folder + "/second.pid", "--handover-socket", proxy.handOver,
            ], timeout: 10)
            #expect(second.status != 0 && second.output.contains("already"), "\(second.output)")
            #expect(try ListenerHandOver.owner(of: proxy.handOver) == first, "the first proxy still offers there")
            #expect((try? connectClient(port: otherPort, timeoutSeconds: 2)) == nil, "the second proxy bound nothing")
            #expect(!FileManager.default.fileExists(atPath: folder + "/second.pid"))
        }
    }
}
