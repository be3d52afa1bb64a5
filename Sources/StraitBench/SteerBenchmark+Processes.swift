import Atomics
import Foundation
import StraitSteer
import StraitSystem

extension SteerBenchmark {
    /// Strait's restart between real processes: `strait steer serve` (this executable) is started
    /// in the namespace, then replaced `restarts` times by a new `strait steer serve --take-over`,
    /// while the client opens short connections at `restartRate`. Each old process drains and exits
    /// by itself once replaced.
    func crossProcessRestart(namespace: NetworkNamespace, controlDirectory: String) throws -> RestartDrill.Result {
        let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let path = controlDirectory + "/serve.sock"
        let port: UInt16 = 44000
        try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        func serve(_ extra: [String]) throws -> ProcessRunner.Running {
            let running = try ProcessRunner().start(
                ["ip", "netns", "exec", namespace.name, binary, "steer", "serve", "--port", "\(port)", "--policy", "consistent-hash:4-tuple",
                 "--handover", path, "--drain-seconds", "2"] + extra)
            let deadline = Date().addingTimeInterval(10)
            while !running.output().contains("ready") && running.process.isRunning && Date() < deadline { usleep(2000) }
            guard running.output().contains("ready") else {
                let sockets = (try? ProcessRunner().run(["ip", "netns", "exec", namespace.name, "ss", "-tanp"], timeout: 5)) ?? ""
                running.stop()
                let onPort = sockets.split(separator: "\n").filter { $0.contains(":\(port) ") }.joined(separator: "\n")
                throw ProcessRunner.Failure(command: ["strait", "steer", "serve"] + extra, status: running.process.isRunning ? -1 : running.process.terminationStatus, output: running.errors() + "\nsockets on port \(port) in the namespace (ss -tanp, \(sockets.split(separator: "\n").count) lines in all):\n" + onPort)
            }
            return running
        }
        var generations = [try serve([])]
        defer { generations.forEach { $0.stop() } }
        let load = ClientLoad(port: port, rate: restartRate, threads: 2)
        let loadDone = ManagedAtomic<Bool>(false)
        Thread.detachNewThread {
            _ = try? namespace.run { load.run() }
            loadDone.store(true, ordering: .releasing)
        }
        let started = Date()
        do {
            usleep(100_000)
            for _ in 0..<restarts {
                generations.append(try serve(["--take-over", path]))
                usleep(100_000)
            }
        } catch {
            load.stop()
            while !loadDone.load(ordering: .acquiring) { usleep(5000) }
            throw error
        }
        load.stop()
        while !loadDone.load(ordering: .acquiring) { usleep(5000) }
        let seconds = Date().timeIntervalSince(started)
        // Every replaced process must have exited by itself after draining.
        let deadline = Date().addingTimeInterval(5)
        while generations.dropLast().contains(where: { $0.process.isRunning }) && Date() < deadline { usleep(10_000) }
        let lingering = generations.dropLast().filter { $0.process.isRunning }.count
        guard lingering == 0 else {
            throw ProcessRunner.Failure(command: ["strait", "steer", "serve"], status: -1, output: "\(lingering) replaced processes did not drain and exit within 5 s")
        }
        return RestartDrill.Result(
            mode: .strait, restarts: restarts, attempted: load.attempted.load(ordering: .relaxed),
            succeeded: load.succeeded.load(ordering: .relaxed), failedConnects: load.failedConnects.load(ordering: .relaxed),
            resets: load.resets.load(ordering: .relaxed), migrated: 0, workMicroseconds: 0, seconds: seconds)
    }
}
