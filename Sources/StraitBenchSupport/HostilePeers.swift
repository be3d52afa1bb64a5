import Foundation
import StraitSystem
import Synchronization

/// Peers that misbehave the ways real ones do, for tests against every proxy datapath and every
/// StraitNet server, and for `strait bench soak`: one that never reads, one that reads slowly, one
/// that resets mid-stream, one that half-closes early, one that sends a byte every 100 ms, one
/// that sends a header or frame larger than any limit, and a horde of idle connections.
///
/// Each is a blocking function on the caller's thread over a ``TestSocket`` (run several at once
/// with ``concurrently(_:)``). Loops are bounded in bytes and time. What a test asserts with them:
/// bytes exact or a clean error; memory bounded (``ResourceSnapshot``); descriptors back to the
/// baseline; the server still serving others.
public enum HostilePeers {
    /// The longest a ``readSlowly(_:pattern:bytesPerSecond:chunk:limit:stallLimit:)`` waited for a byte.
    public static let longestStall = Mutex<Duration>(.zero)

    /// A connected blocking IPv4 socket to 127.0.0.1:`port`, with send and receive timeouts.
    public static func connect(port: UInt16, timeoutSeconds: Int = 30) throws -> TestSocket {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        let connection = TestSocket(fd: fd)
        try SocketCall.connect(fd, to: .loopback(port: port))
        connection.setReceiveTimeout(seconds: timeoutSeconds)
        return connection
    }

    /// Writes `pattern` from offset 0 without blocking until `limit` bytes went out, or until none
    /// went out for `stall`; returns how many did. Against a peer that never reads, that is what
    /// the path between them (socket buffers, the proxy, the kernel's queues) took in before
    /// back-pressure stopped the writer: an upper bound on what the connection holds in memory.
    public static func pushUntilStalled(_ socket: TestSocket, pattern: PatternStream, limit: Int, stall: Duration, chunk: Int = 256 << 10) throws -> Int {
        var sent = 0
        var lastProgress = ContinuousClock.now
        while sent < limit && ContinuousClock.now - lastProgress < stall {
            let length = min(chunk, limit - sent)
            let bytes = pattern.bytes(at: sent, count: length)
            let result = try bytes.withUnsafeBytes { raw in try RelayCall.send(socket.fd, raw) }
            switch result {
            case .done(let count):
                sent += count
                lastProgress = .now
            case .wouldBlock:
                _ = try SocketCall.waitWritable(socket.fd, timeout: .milliseconds(10))
            }
        }
        return sent
    }

    /// Reads to the end (or `limit` bytes) in reads of `chunk` bytes at about `bytesPerSecond`
    /// (polled reads, see ``TestSocket/polledReceive(into:)``), checking every byte against `pattern`. Returns the count and the first mismatch, if any.
    /// A read that finds nothing for ``TestSocket/readDeadline`` is retried until `stallLimit` has
    /// passed with no byte (and the longest such wait is in ``longestStall``).
    public static func readSlowly(_ socket: TestSocket, pattern: PatternStream, bytesPerSecond: Int, chunk: Int = 16 << 10, limit: Int = .max, stallLimit: Duration = TestSocket.readDeadline) throws -> (count: Int, firstMismatch: Int?) {
        var buffer = [UInt8](repeating: 0, count: chunk)
        var total = 0
        var mismatch: Int?
        let started = ContinuousClock.now
        while total < limit {
            // Stay on schedule: sleep until `total` bytes are due.
            let due = started + .milliseconds(total * 1000 / max(1, bytesPerSecond))
            if due > .now { Thread.sleep(forTimeInterval: Double((due - .now).components.attoseconds) / 1e18 + Double((due - .now).components.seconds)) }
            let want = min(chunk, limit - total)
            let waitStarted = ContinuousClock.now
            var got = -Int(ETIMEDOUT)
            while got == -Int(ETIMEDOUT) && ContinuousClock.now - waitStarted < stallLimit {
                got = buffer.withUnsafeMutableBytes { socket.polledReceive(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
            }
            let waited = ContinuousClock.now - waitStarted
            longestStall.withLock { $0 = max($0, waited) }
            if got < 0 { throw ReadFailure(code: Int32(-got)) }
            if got == 0 { break }
            if mismatch == nil && !buffer.withUnsafeBytes({ pattern.matches(UnsafeRawBufferPointer(rebasing: $0[0..<got]), at: total) }) {
                mismatch = total
            }
            total += got
        }
        return (total, mismatch)
    }

    /// Sends `bytes` one at a time, `interval` apart (a slowloris client): what a server must not
    /// let hold a thread, a deadline it cannot keep, or unbounded memory.
    public static func trickle(_ socket: TestSocket, bytes: [UInt8], interval: Duration = .milliseconds(100)) throws {
        for byte in bytes {
            try socket.sendAll([byte])
            Thread.sleep(forTimeInterval: Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18)
        }
    }

    /// Sends the first `count` bytes of `pattern`, then closes with a reset (`SO_LINGER` 0).
    public static func resetAfter(_ socket: TestSocket, pattern: PatternStream, count: Int) throws {
        try socket.send(pattern, count: count, chunk: 64 << 10)
        resetClose(socket)
    }

    /// Sends the first `count` bytes of `pattern`, half-closes at once, and reads what comes back to
    /// the end, checking it against `reply` (an echo: the same pattern). Returns what it read.
    public static func halfCloseEarly(_ socket: TestSocket, pattern: PatternStream, count: Int) throws -> (count: Int, firstMismatch: Int?) {
        try socket.send(pattern, count: count, chunk: 64 << 10)
        try socket.shutdownWrite()
        return try socket.polledReceiveAndVerify(pattern)
    }

    /// Sends `size` bytes of a request header that never ends (no blank line), then closes: a
    /// server must close it at its limit rather than wait for the rest.
    public static func oversizedHeader(_ socket: TestSocket, size: Int) throws {
        var header = Array("GET /metrics HTTP/1.1\r\nX-Padding: ".utf8)
        header += [UInt8](repeating: UInt8(ascii: "a"), count: max(0, size - header.count))
        try? socket.sendAll(header)
        socket.close()
    }

    /// Opens `count` connections (at most 2,000) that send nothing and read nothing.
    public static func idleHorde(port: UInt16, count: Int) throws -> [TestSocket] {
        try (0..<min(count, 2000)).map { _ in try connect(port: port) }
    }
}

/// Closes a socket so the peer sees a reset.
public func resetClose(_ socket: TestSocket) {
    try? SocketCall.setResetOnClose(socket.fd)
    socket.close()
}

/// What this process and the kernel hold at one moment: for bounds on memory and descriptor
/// leaks. Kernel memory is machine-wide (`MemAvailable`; TCP's pages from `/proc/net/sockstat`,
/// which misses skbs parked in a psock backlog), so compare snapshots taken close together.
public struct ResourceSnapshot: Sendable, CustomStringConvertible {
    /// `MemAvailable` from /proc/meminfo, bytes.
    public var memoryAvailable: Int
    /// TCP's memory in pages times the page size (`TCP: … mem N` in /proc/net/sockstat), bytes.
    public var tcpMemory: Int
    /// This process's resident set (`VmRSS`), bytes.
    public var resident: Int
    /// Open descriptors of this process.
    public var descriptors: Int

    /// Reads the four numbers now: three small /proc files and a listing of /proc/self/fd.
    public static func now() -> ResourceSnapshot {
        ResourceSnapshot(
            memoryAvailable: field("/proc/meminfo", "MemAvailable:") * 1024,
            tcpMemory: tcpPages() * Int(sysconf(Int32(_SC_PAGESIZE))),
            resident: field("/proc/self/status", "VmRSS:") * 1024,
            descriptors: ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.count ?? 1) - 1)  // less the listing's own
    }

    /// The snapshot in MiB and descriptor count, for a test's failure message.
    public var description: String {
        "MemAvailable \(memoryAvailable >> 20) MiB, TCP \(tcpMemory >> 20) MiB, RSS \(resident >> 20) MiB, \(descriptors) fds"
    }

    /// The first number after `key` in a `key value kB` file.
    private static func field(_ path: String, _ key: String) -> Int {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key) })
        else { return 0 }
        return Int(line.dropFirst(key.count).split(whereSeparator: \.isWhitespace).first ?? "") ?? 0
    }

    private static func tcpPages() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/net/sockstat", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("TCP:") })
        else { return 0 }
        let words = line.split(separator: " ")
        guard let index = words.firstIndex(of: "mem"), index + 1 < words.count else { return 0 }
        return Int(words[index + 1]) ?? 0
    }
}
