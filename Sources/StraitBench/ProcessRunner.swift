import Foundation
import StraitSystem

/// Runs the peer tools a benchmark compares against (iperf3, sockperf, …) as child processes of
/// this one, so a whole benchmark is one process tree that ends when it ends.
public struct ProcessRunner: Sendable {
    public init() {}

    public struct Failure: Error, CustomStringConvertible {
        public let command: [String]
        public let status: Int32
        public let output: String
        public var description: String {
            "`\(command.joined(separator: " "))` exited with \(status): \(output.suffix(800))"
        }
    }

    /// Runs `command` to completion (killed after `timeout` seconds) and returns its standard output.
    public func run(_ command: [String], timeout: Double) throws -> String {
        let process = try start(command)
        let deadline = Date().addingTimeInterval(timeout)
        while process.process.isRunning && Date() < deadline { usleep(20_000) }
        if process.process.isRunning { process.stop() }
        process.process.waitUntilExit()
        process.drain()
        let output = process.output()
        guard process.process.terminationStatus == 0 else {
            throw Failure(command: command, status: process.process.terminationStatus, output: output + process.errors())
        }
        return output
    }

    /// Starts `command` in the background; stop it with ``Running/stop()``.
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

    /// A started child process. Its output is collected as it runs, so a chatty child never blocks.
    public final class Running: @unchecked Sendable {
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

        public func output() -> String { lock.withLock { String(decoding: stdout, as: UTF8.self) } }
        public func errors() -> String { lock.withLock { String(decoding: stderr, as: UTF8.self) } }

        /// SIGTERM, then SIGKILL if it has not exited within a second.
        public func stop() {
            guard process.isRunning else { return }
            process.terminate()
            let deadline = Date().addingTimeInterval(1)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    /// Finds an executable on PATH (or a path given as is).
    public static func locate(_ name: String) throws -> String {
        if let path = Executable.onPath(name) { return path }
        throw Failure(command: [name], status: 127, output: "\(name) is not installed: run `make deps` (it installs iperf3, sockperf and the other peers)")
    }

    /// The `strait` binary the benchmarks run as a separate process (`strait steer serve`): the one
    /// beside this `strait-bench` (both are built into the same products folder), else on PATH.
    public static func locateStrait() throws -> String {
        guard let path = Executable.sibling("strait") else {
            throw Failure(command: ["strait"], status: 127, output: "no strait beside \(Executable.current) or on PATH: build it with `swift build -c release --product strait`")
        }
        return path
    }
}
