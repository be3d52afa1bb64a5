import Atomics
import Foundation
import StraitBenchSupport
import StraitSteer
import StraitSystem

extension SteerBenchmark {
    /// Strait's restart between real processes with this bench's settings, running the `strait`
    /// beside this `strait-bench` (else on PATH); see
    /// ``restartAcrossProcesses(strait:restarts:connectionsPerSecond:interval:namespace:controlDirectory:)``.
    func crossProcessRestart(namespace: NetworkNamespace, controlDirectory: String) throws -> RestartDrill.Result {
        let binary = try ProcessRunner.locateStrait()
        return try Self.restartAcrossProcesses(
            strait: binary, restarts: restarts, connectionsPerSecond: restartRate, interval: .milliseconds(100), namespace: namespace,
            controlDirectory: controlDirectory)
    }

    /// Strait's restart between real processes: `strait steer serve` (the `strait` executable at
    /// `strait`) is started in `namespace` on a port the kernel chooses (so it can never collide with
    /// a client socket's local port from earlier load in the namespace), then replaced `restarts`
    /// times by a new `strait steer serve --take-over`, each started `interval` after the previous
    /// one printed `ready`, while a client opens short connections at `connectionsPerSecond`.
    /// Every replaced process must drain and exit by itself within 5 s of the end, or this throws.
    /// A generation that fails to start throws with its error output and the namespace's sockets
    /// on the port (`ss -tanp`), which is what explains an `EADDRINUSE`.
    public static func restartAcrossProcesses(
        strait binary: String, restarts: Int, connectionsPerSecond: Int, interval: Duration, namespace: NetworkNamespace,
        controlDirectory: String
    ) throws -> RestartDrill.Result {
        let path = controlDirectory + "/serve.sock"
        try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        var port: UInt16 = 0
        func serve(_ extra: [String]) throws -> ProcessRunner.Running {
            let command = ["steer", "serve", "--port", "\(port)", "--policy", "consistent-hash:4-tuple", "--handover", path, "--drain-seconds", "2"] + extra
            let running = try ProcessRunner().start(["ip", "netns", "exec", namespace.name, binary] + command)
            let deadline = Date().addingTimeInterval(10)
            while !running.output().contains("ready") && running.process.isRunning && Date() < deadline { usleep(1000) }
            // `ready 127.0.0.1:PORT pid PID`
            guard let line = running.output().split(separator: "\n").first(where: { $0.hasPrefix("ready ") }),
                let address = line.split(separator: " ").dropFirst().first, let bound = address.split(separator: ":").last.flatMap({ UInt16($0) })
            else {
                let sockets = (try? ProcessRunner().run(["ip", "netns", "exec", namespace.name, "ss", "-tanp"], timeout: 5)) ?? ""
                running.stop()
                let onPort = port == 0 ? [] : sockets.split(separator: "\n").filter { $0.contains(":\(port) ") }
                throw ToolFailure(
                    command: ["strait"] + command, status: running.process.isRunning ? -1 : running.process.terminationStatus,
                    output: running.errors() + "\nsockets on port \(port) in the namespace (ss -tanp): \(onPort.isEmpty ? "none" : "\n" + onPort.joined(separator: "\n"))")
            }
            port = bound
            return running
        }
        var generations = [try serve([])]
        defer { generations.forEach { $0.stop() } }
        let load = ClientLoad(port: port, rate: connectionsPerSecond, threads: 2)
        let loadDone = ManagedAtomic<Bool>(false)
        Thread.detachNewThread {
            _ = try? namespace.run { load.run() }
            loadDone.store(true, ordering: .releasing)
        }
        let started = Date()
        let pause = useconds_t(interval.components.seconds * 1_000_000 + interval.components.attoseconds / 1_000_000_000_000)
        do {
            usleep(100_000)
            for _ in 0..<restarts {
                generations.append(try serve(["--take-over", path]))
                usleep(pause)
            }
            usleep(100_000)
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
            throw ToolFailure(command: ["strait", "steer", "serve"], status: -1, output: "\(lingering) replaced processes did not drain and exit within 5 s")
        }
        return RestartDrill.Result(
            mode: .strait, restarts: restarts, attempted: load.attempted.load(ordering: .relaxed),
            succeeded: load.succeeded.load(ordering: .relaxed), failedConnects: load.failedConnects.load(ordering: .relaxed),
            resets: load.resets.load(ordering: .relaxed), migrated: 0, workMicroseconds: 0, seconds: seconds)
    }
}
