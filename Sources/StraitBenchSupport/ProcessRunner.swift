import Foundation
import StraitSystem

/// Runs the peer tools a benchmark compares against (iperf3, sockperf, wrk, the bench servers) as
/// child processes of this one, so a whole benchmark is one process tree that ends when it ends.
/// The one process runner of `strait-bench`: ``PeerProcess`` and the test fixtures stop children
/// the same way (``stop(_:grace:)``).
public struct ProcessRunner: Sendable {
    /// A runner; it holds nothing, each call starts its own child.
    public init() {}

    /// Runs `command` to completion (killed after `timeout` seconds) and returns its standard output;
    /// throws ``ToolFailure`` with both outputs when it exits non-zero.
    public func run(_ command: [String], timeout: Double) throws -> String {
        let process = try start(command)
        let deadline = Date().addingTimeInterval(timeout)
        while process.process.isRunning && Date() < deadline { usleep(20_000) }
        process.stop()
        process.drain()
        let output = process.output()
        guard process.process.terminationStatus == 0 else {
            throw ToolFailure(command: command, status: process.process.terminationStatus, output: output + process.errors())
        }
        return output
    }

    /// Starts `command` in the background; stop it with ``Running/stop()``. The caller owns it.
    public func start(_ command: [String]) throws -> Running {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.locate(command[0]))
        process.arguments = Array(command.dropFirst())
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let running = Running(process: process, out: out, err: err)
        try process.run()
        return running
    }

    /// SIGTERM, then SIGKILL if `process` has not exited within `grace` seconds; returns once it
    /// has exited and been reaped. Nothing happens to a process that is not running.
    public static func stop(_ process: Process, grace: Double = 1) {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { try? ProcessCall.signal(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// A started child process. Its output is collected as it runs, so a chatty child never blocks.
    public final class Running: @unchecked Sendable {
        /// The child, owned by this value: ``stop()`` ends it, and nothing else waits on it.
        public let process: Process
        private let lock = NSLock()
        private var stdout = Data()
        private var stderr = Data()
        private let out: Pipe
        private let err: Pipe

        init(process: Process, out: Pipe, err: Pipe) {
            self.process = process
            self.out = out
            self.err = err
            out.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                self?.lock.withLock { self?.stdout.append(data) }
            }
            err.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                self?.lock.withLock { self?.stderr.append(data) }
            }
        }

        /// After exit: stops the background readers and reads what is left up to end of file, so the
        /// last bytes the child wrote are never missed.
        func drain() {
            out.fileHandleForReading.readabilityHandler = nil
            err.fileHandleForReading.readabilityHandler = nil
            let restOut = out.fileHandleForReading.readDataToEndOfFile()
            let restErr = err.fileHandleForReading.readDataToEndOfFile()
            lock.withLock {
                stdout.append(restOut)
                stderr.append(restErr)
            }
        }

        /// What the child has written to standard output so far (a copy).
        public func output() -> String { lock.withLock { String(decoding: stdout, as: UTF8.self) } }
        /// What the child has written to standard error so far (a copy).
        public func errors() -> String { lock.withLock { String(decoding: stderr, as: UTF8.self) } }

        /// SIGTERM, then SIGKILL if it has not exited within a second (``ProcessRunner/stop(_:grace:)``).
        public func stop() { ProcessRunner.stop(process) }
    }

    /// Finds an executable on PATH (or a path given as is); status 127 when it is not installed.
    public static func locate(_ name: String) throws(ToolFailure) -> String {
        if let path = Executable.onPath(name) { return path }
        throw ToolFailure(command: [name], status: 127, output: "\(name) is not installed: run `make deps` (it installs iperf3, sockperf and the other peers)")
    }

    /// The `strait` binary the benchmarks run as a separate process (`strait steer serve`): the one
    /// beside this `strait-bench` (both are built into the same products folder), else on PATH.
    public static func locateStrait() throws(ToolFailure) -> String {
        guard let path = Executable.sibling("strait") else {
            throw ToolFailure(command: ["strait"], status: 127, output: "no strait beside \(Executable.current) or on PATH: build it with `swift build -c release --product strait`")
        }
        return path
    }
}
