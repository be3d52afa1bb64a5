import Foundation
import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

/// Every test that opens sockets, one at a time: the descriptor counts of one test must not see
/// another's sockets.
@Suite(.serialized) enum Loopback {}

/// A plain blocking client socket with a receive timeout, so tests drive servers the way any
/// peer would, and can misbehave on purpose (stall, half-close, reset).
final class PlainClient {
    private(set) var fd: CInt

    init(_ address: SocketAddress, receiveTimeout: Duration = .seconds(5)) throws {
        fd = try SocketCall.socket(for: address, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        var timeout = timeval(tv_sec: Int(receiveTimeout.components.seconds), tv_usec: Int(receiveTimeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        try SocketCall.connect(fd, to: address)
    }

    deinit { if fd >= 0 { closeDescriptor(fd) } }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = try bytes.withUnsafeBytes { raw throws(SystemCallError) in
                try systemCall("send") { Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, CInt(MSG_NOSIGNAL)) }
            }
            sent += count
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads until `count` bytes arrived, end of stream, or the receive timeout.
    func receive(_ count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while bytes.count < count {
            let wanted = count - bytes.count
            let received = try chunk.withUnsafeMutableBytes { room throws(SystemCallError) in
                try SocketCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: room.prefix(wanted)))
            }
            if received == 0 { break }
            bytes += chunk[0..<received]
        }
        return bytes
    }

    func receiveString(_ count: Int) throws -> String { String(decoding: try receive(count), as: UTF8.self) }

    /// True when the peer closed: the next read returns end of stream (or a reset).
    func readsEndOfStream() -> Bool {
        var byte: UInt8 = 0
        let result = Glibc.recv(fd, &byte, 1, 0)
        return result == 0 || (result < 0 && errno == ECONNRESET)
    }

    func shutdownWrite() { Glibc.shutdown(fd, CInt(SHUT_WR)) }

    /// Closes with an RST instead of a FIN (SO_LINGER with a zero timeout).
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        closeDescriptor(fd)
        fd = -1
    }
}

/// Open sockets, epoll sets and eventfds of this process (the kinds StraitNet opens), from
/// /proc/self/fd. Timers and pipes are left out: the Swift runtime opens those lazily.
func openDescriptorCount() -> Int {
    openDescriptors().filter { $0.contains("socket:") || $0.contains("[eventpoll]") || $0.contains("[eventfd]") }.count
}

/// The sockets, epoll sets and eventfds open now, each as "fd -> kind:[inode]".
func descriptorSnapshot() -> Set<String> {
    Set(openDescriptors().filter { $0.contains("socket:") || $0.contains("[eventpoll]") || $0.contains("[eventfd]") })
}

/// Descriptors open now that were not open at `snapshot`: what a test leaked. Other tests closing
/// their own descriptors meanwhile cannot make this fail, unlike comparing counts.
func descriptorsOpened(since snapshot: Set<String>) -> [String] {
    descriptorSnapshot().subtracting(snapshot).sorted()
}

/// What each open descriptor is, for messages when a count is off.
func openDescriptors() -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return names.map { "\($0) -> \((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) ?? "?")" }
}

/// A value a loop thread sets and a test thread waits for.
final class Signal<Value: Sendable>: Sendable {
    private let state = Mutex<[Value]>([])

    func send(_ value: Value) { state.withLock { $0.append(value) } }

    var values: [Value] { state.withLock { $0 } }

    /// Waits up to `timeout` for at least `count` values.
    func wait(count: Int = 1, timeout: Duration = .seconds(5)) async -> [Value] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let values = self.values
            if values.count >= count { return values }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return values
    }
}

/// Echo handlers: whatever arrives goes straight back, moved node by node (no copy).
func echoHandlers(disconnects: Signal<CloseReason>? = nil) -> ConnectionHandlers {
    ConnectionHandlers(
        onRequest: { connection in
            connection.writer.append(connection.reader)
            connection.flush()
        },
        onDisconnect: { _, reason in disconnects?.send(reason) }
    )
}

/// Runs `body` with a started group of `loops` loops and shuts it down afterwards.
func withGroup<Result>(loops: Int = 2, _ body: (EventLoopGroup) async throws -> Result) async throws -> Result {
    let group = try EventLoopGroup(loopCount: loops)
    do {
        let result = try await body(group)
        group.shutdown()
        return result
    } catch {
        group.shutdown()
        throw error
    }
}

/// Polls `condition` every 2 ms until it holds or `timeout` passes; returns its last value. For
/// state that other threads settle asynchronously (a peer's close reaching the server, say).
func eventually(timeout: Duration = .seconds(2), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}
