import Foundation
import StraitSystem

/// A blocking TCP socket for tests and benchmark peers. It owns its descriptor and closes it on
/// ``close()`` or deinit. Not thread-safe: one thread uses it at a time.
public final class TestSocket: @unchecked Sendable {
    /// The descriptor, -1 once closed.
    public private(set) var fd: CInt

    /// Takes ownership of `fd`.
    public init(fd: CInt) { self.fd = fd }
    deinit { close() }

    /// Closes the descriptor (once; later calls do nothing).
    public func close() {
        if fd >= 0 { closeDescriptor(fd) }
        fd = -1
    }

    /// Sends every byte, in writes of at most `chunk` bytes (each write is one sendmsg, so one
    /// sk_msg verdict). Throws on error (EPIPE, ECONNRESET…).
    public func sendAll(_ bytes: UnsafeRawBufferPointer, chunk: Int = 1 << 20) throws {
        var offset = 0
        while offset < bytes.count {
            let length = min(chunk, bytes.count - offset)
            let sent = try SocketCall.send(fd, UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
            offset += sent
        }
    }

    /// ``sendAll(_:chunk:)`` of an array.
    public func sendAll(_ bytes: [UInt8], chunk: Int = 1 << 20) throws {
        try bytes.withUnsafeBytes { try sendAll($0, chunk: chunk) }
    }

    /// Reads exactly `count` bytes, or fewer if the peer closes first.
    public func receive(exactly count: Int, flags: Int32 = 0) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = try buffer.withUnsafeMutableBytes { raw in
                try SocketCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[offset...]), flags: flags)
            }
            if got == 0 { break }
            offset += got
        }
        return Array(buffer[0..<offset])
    }

    /// Reads until the peer shuts down its sending side.
    public func receiveToEnd() throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let got = try buffer.withUnsafeMutableBytes { raw in
                try SocketCall.receive(fd, into: raw)
            }
            if got == 0 { return result }
            result += buffer[0..<got]
        }
    }

    /// Half-closes: the peer reads end of stream, this side can still read.
    public func shutdownWrite() throws {
        try SocketCall.shutdown(fd, how: CInt(SHUT_WR))
    }

    /// Bytes readable now (FIONREAD).
    public func readableBytes() throws -> Int {
        try SocketCall.readableBytes(fd)
    }

    /// Sets both the receive and the send timeout (``SocketCall/setTimeouts(_:seconds:)``).
    public func setReceiveTimeout(seconds: Int) {
        try? SocketCall.setTimeouts(fd, seconds: seconds)
    }

    /// Local port, host order; 0 when the socket is not bound.
    public var localPort: UInt16 {
        (try? SocketCall.localAddress(of: fd))?.port ?? 0
    }
}

/// How a test connection is addressed.
public enum TestFamily: String, Sendable, CaseIterable, CustomStringConvertible {
    case ipv4
    case ipv6
    /// An AF_INET client connecting to an AF_INET6 server listening on [::] (as iperf3 does): the
    /// server's socket sees IPv4-mapped addresses.
    case ipv4ToDualStack

    /// `ipv4`, `ipv6` or `ipv4ToDualStack`, for test names.
    public var description: String { rawValue }
}

/// A listening socket on loopback (port chosen by the kernel).
public final class TestListener: @unchecked Sendable {
    /// The listening socket; this listener owns its descriptor and closes it when released.
    public let socket: TestSocket
    /// Which family it listens on and how clients reach it.
    public let family: TestFamily
    /// The port the kernel gave it (or the one asked for), host byte order.
    public let port: UInt16

    /// Binds and listens (blocking, `SO_REUSEADDR`) on loopback, or on `[::]` accepting IPv4 too for
    /// ``TestFamily/ipv4ToDualStack``, at `requested` (0: the kernel picks).
    public init(_ family: TestFamily, port requested: UInt16 = 0) throws {
        let address: SocketAddress = switch family {
        case .ipv4: .loopback(port: requested)
        case .ipv6: .loopbackIPv6(port: requested)
        case .ipv4ToDualStack: .ip(IPAddress("::")!, port: requested)
        }
        let fd = try SocketCall.socket(for: address, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        socket = TestSocket(fd: fd)
        self.family = family
        try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        if family == .ipv4ToDualStack { try SocketCall.setOption(fd, level: CInt(IPPROTO_IPV6), name: IPV6_V6ONLY, value: 0) }
        try SocketCall.bind(fd, to: address)
        try SocketCall.listen(fd, backlog: 1024)
        port = socket.localPort
    }

    /// Connects a new client (bound to `clientPort` if given) and accepts it.
    public func connectPair(clientPort: UInt16 = 0) throws -> (client: TestSocket, server: TestSocket) {
        let loopback: (UInt16) -> SocketAddress = family == .ipv6 ? { .loopbackIPv6(port: $0) } : { .loopback(port: $0) }
        let fd = try SocketCall.socket(for: loopback(0), type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        let client = TestSocket(fd: fd)
        if clientPort != 0 {
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            try SocketCall.bind(fd, to: loopback(clientPort))
        }
        try SocketCall.connect(fd, to: loopback(port))
        return (client, TestSocket(fd: try SocketCall.acceptWaiting(socket.fd)))
    }
}

/// Runs closures on their own threads and waits for all; rethrows the first error.
public func concurrently(_ bodies: [@Sendable () throws -> Void]) throws {
    let group = DispatchGroup()
    let lock = NSLock()
    nonisolated(unsafe) var firstError: Error?
    for body in bodies {
        group.enter()
        Thread.detachNewThread {
            defer { group.leave() }
            do { try body() } catch { lock.withLock { if firstError == nil { firstError = error } } }
        }
    }
    group.wait()
    if let firstError { throw firstError }
}
