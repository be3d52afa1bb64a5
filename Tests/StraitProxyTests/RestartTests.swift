import Foundation
import StraitSystem
import StraitTestSupport
import Synchronization
import Testing

/// `strait proxy restart` with real processes: the `strait` binary built beside this test bundle.
@Suite("proxy: restart in place under load", .serialized)
struct RestartTests {
    /// The `strait` executable of this build (it sits beside the test bundle).
    static var straitBinary: String? {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("strait").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }

    @Test("three restarts while clients connect continuously: no connection refused, reset or lost",
          arguments: ["copy", "splice"])
    func restartUnderLoad(datapath: String) throws {
        let binary = try #require(Self.straitBinary, "build the strait product first (make test does)")
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-restart")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let pidFile = folder + "/proxy.pid", handOver = folder + "/handover.sock"
        let port = try TestListener(.ipv4).port  // bound and released: free, and never in TIME_WAIT

        let first = Process()
        first.executableURL = URL(fileURLWithPath: binary)
        first.arguments = ["proxy", "--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(upstream.port)",
                           "--datapath", datapath, "--pid-file", pidFile, "--handover-socket", handOver, "--log-level", "error"]
        try first.run()
        // Whatever process holds the pid file at the end is stopped, even if an expectation failed.
        defer {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGTERM)
            }
            if first.isRunning { first.terminate() }
            first.waitUntilExit()
        }
        var ready = false
        for _ in 0..<200 where !ready {
            ready = (try? connectClient(port: port, timeoutSeconds: 2)) != nil && FileManager.default.fileExists(atPath: pidFile)
            if !ready { usleep(20_000) }
        }
        try #require(ready, "the proxy did not start listening")

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
            let restart = Process()
            restart.executableURL = URL(fileURLWithPath: binary)
            restart.arguments = ["proxy", "restart", "--pid-file", pidFile]
            restart.standardOutput = FileHandle.nullDevice
            try restart.run()
            restart.waitUntilExit()
            #expect(restart.terminationStatus == 0, "strait proxy restart succeeded")
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                pids.append(pid)
            }
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
