import Foundation

/// One benchmark peer (a server or a load client) run as a child process from the build's
/// products folder. Its standard output is collected as it comes; ``stop()`` sends SIGTERM, then
/// SIGKILL after a second, so no peer outlives the benchmark.
final class PeerProcess: @unchecked Sendable {
    let name: String
    let process = Process()
    private let input = Pipe()
    private let lock = NSLock()
    private var collected = Data()

    /// Starts `binaries/name arguments`. `preload` is put in `LD_PRELOAD` (the allocation counter).
    init(binaries: URL, name: String, arguments: [String], preload: URL? = nil) throws {
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

    var output: String { lock.withLock { String(decoding: collected, as: UTF8.self) } }

    /// Writes one command line to the peer's standard input.
    func send(_ line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Waits until the output has a line starting with `prefix`, up to `timeout` seconds.
    func waitForLine(startingWith prefix: String, timeout: Double) throws -> String {
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
    func waitForExit(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        stop()
    }

    /// Peak resident set size so far (`VmHWM`), in KiB; 0 once the process is gone.
    var peakRSSKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return 0 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }

    func stop() {
        defer { ChildProcesses.remove(process.processIdentifier) }
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(1)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// The first port from `preferred` on (wrapping within 47000-47999, Strait's benchmark range) that
    /// a server can bind on 127.0.0.1 with `SO_REUSEADDR`. Load generators' closed connections sit in
    /// TIME_WAIT on ephemeral ports that may fall in this range, and such a port cannot be bound
    /// for a minute, so every server start asks again.
    static func availablePort(preferred: Int) -> Int {
        let range = 47000...47999
        for offset in 0..<range.count {
            let port = range.lowerBound + (preferred - range.lowerBound + offset) % range.count
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if bound == 0 { return port }
        }
        return preferred
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port` (5 s at most).
    static func waitForPort(_ port: Int) throws {
        for _ in 0..<200 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if connected == 0 { return }
            usleep(25_000)
        }
        throw BenchmarkError.serverDidNotStart(port)
    }
}

public enum BenchmarkError: Error, CustomStringConvertible {
    case serverDidNotStart(Int)
    case unreadableReport(String)
    case missingPeer(String)
    case noReport(String, String)

    public var description: String {
        switch self {
        case .serverDidNotStart(let port): "no server answered on 127.0.0.1:\(port) within 5 s"
        case .unreadableReport(let report): "could not read the load generator's report:\n\(report)"
        case .missingPeer(let path):
            "\(path) is missing: the bench peers are products of this package; build them all with `swift build -c release` and run the strait binary from that build folder"
        case .noReport(let name, let output): "\(name) printed no report; its output was:\n\(output.suffix(800))"
        }
    }
}
