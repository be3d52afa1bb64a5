import Foundation
import StraitSystem

/// One benchmark peer (a server or a load client) run as a child process from the build's
/// products folder. Its standard output is collected as it comes; ``stop()`` sends SIGTERM, then
/// SIGKILL after a second, so no peer outlives the benchmark. The benchmark that starts it owns it;
/// it is also registered in ``ChildProcesses`` so an interrupted run kills it.
public final class PeerProcess: @unchecked Sendable {
    /// The executable's name, for reports.
    public let name: String
    /// The child process.
    public let process = Process()
    private let input = Pipe()
    private let lock = NSLock()
    private var collected = Data()

    /// Starts `binaries/name arguments`. `preload` is put in `LD_PRELOAD` (the allocation counter).
    public init(binaries: URL, name: String, arguments: [String], preload: URL? = nil) throws {
        self.name = name
        let executable = binaries.appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: executable.path) else { throw BenchmarkError.missingPeer(executable.path) }
        process.executableURL = executable
        process.arguments = arguments
        if let preload {
            var environment = ProcessInfo.processInfo.environment
            environment["LD_PRELOAD"] = preload.path
            process.environment = environment
        }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = input
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.withLock { self.collected.append(data) }
        }
        try process.run()
        ChildProcesses.add(process.processIdentifier)
    }

    deinit { stop() }

    /// What the peer has written to standard output so far (a copy).
    public var output: String { lock.withLock { String(decoding: collected, as: UTF8.self) } }

    /// Writes one command line to the peer's standard input.
    public func send(_ line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Waits until the output has a line starting with `prefix`, up to `timeout` seconds.
    public func waitForLine(startingWith prefix: String, timeout: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = output.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) { return String(line) }
            guard process.isRunning else { break }
            usleep(10_000)
        }
        if let line = output.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) { return String(line) }
        throw BenchmarkError.noReport(name, output)
    }

    /// Waits for the process to exit by itself, killing it after `timeout` seconds.
    public func waitForExit(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        stop()
    }

    /// Peak resident set size so far (`VmHWM`), in KiB; 0 once the process is gone.
    public var peakRSSKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return 0 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }

    /// SIGTERM, then SIGKILL after a second (``ProcessRunner/stop(_:grace:)``).
    public func stop() {
        defer { ChildProcesses.remove(process.processIdentifier) }
        ProcessRunner.stop(process)
    }
}

/// Why a benchmark could not measure: a peer that did not start, printed nothing readable, or is
/// not built.
public enum BenchmarkError: Error, CustomStringConvertible {
    /// Nothing listened on 127.0.0.1 on this port within the given seconds.
    case serverDidNotStart(port: UInt16, seconds: Double)
    /// The load generator's report could not be parsed (its text).
    case unreadableReport(String)
    /// The peer's executable is not in the build's products folder (its path).
    case missingPeer(String)
    /// The peer (name) exited or timed out without the line asked for (its output).
    case noReport(String, String)

    /// What went wrong, with the port, path or output that shows it.
    public var description: String {
        switch self {
        case .serverDidNotStart(let port, let seconds): "nothing listened on 127.0.0.1:\(port) within \(seconds) s"
        case .unreadableReport(let report): "could not read the load generator's report:\n\(report)"
        case .missingPeer(let path):
            "\(path) is missing: the bench peers are products of this package; build them all with `swift build -c release` and run the strait binary from that build folder"
        case .noReport(let name, let output): "\(name) printed no report; its output was:\n\(output.suffix(800))"
        }
    }
}
