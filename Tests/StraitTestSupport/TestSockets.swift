import CStraitSystem
import Foundation
import StraitSystem

/// A blocking TCP socket for tests, closed on deinit.
public final class TestSocket: @unchecked Sendable {
    public private(set) var fd: CInt

    public init(fd: CInt) { self.fd = fd }
    deinit { close() }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Sends every byte, in writes of at most `chunk` bytes (each write is one sendmsg, so one
    /// sk_msg verdict). Throws on error (EPIPE, ECONNRESET…).
    public func sendAll(_ bytes: UnsafeRawBufferPointer, chunk: Int = 1 << 20) throws {
        var offset = 0
        while offset < bytes.count {
            let length = min(chunk, bytes.count - offset)
            let sent = try systemCall("send") { Glibc.send(fd, bytes.baseAddress! + offset, length, Int32(MSG_NOSIGNAL)) }
            offset += sent
        }
    }

    public func sendAll(_ bytes: [UInt8], chunk: Int = 1 << 20) throws {
        try bytes.withUnsafeBytes { try sendAll($0, chunk: chunk) }
    }

    /// Reads exactly `count` bytes, or fewer if the peer closes first.
    public func receive(exactly count: Int, flags: Int32 = 0) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = try buffer.withUnsafeMutableBytes { raw in
                try systemCall("recv") { recv(fd, raw.baseAddress! + offset, count - offset, flags) }
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
                try systemCall("recv") { recv(fd, raw.baseAddress!, raw.count, 0) }
            }
            if got == 0 { return result }
            result += buffer[0..<got]
        }
    }

    public func shutdownWrite() throws {
        try systemCall("shutdown") { shutdown(fd, Int32(SHUT_WR)) }
    }

    /// Bytes readable now (FIONREAD).
    public func readableBytes() throws -> Int {
        var count: CInt = 0
        try systemCall("ioctl(FIONREAD)") { ioctl(fd, UInt(FIONREAD), &count) }
        return Int(count)
    }

    public func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Local port, host order.
    public var localPort: UInt16 {
        var address = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin6_port)  // sin_port and sin6_port share the offset
    }
}

/// How a test connection is addressed.
public enum TestFamily: String, Sendable, CaseIterable, CustomStringConvertible {
    case ipv4
    case ipv6
    /// An AF_INET client connecting to an AF_INET6 server listening on [::] (as iperf3 does): the
    /// server's socket sees IPv4-mapped addresses.
    case ipv4ToDualStack

    public var description: String { rawValue }
}

/// A listening socket on loopback (port chosen by the kernel).
public final class TestListener: @unchecked Sendable {
    public let socket: TestSocket
    public let family: TestFamily
    public let port: UInt16

    public init(_ family: TestFamily, port requested: UInt16 = 0) throws {
        let domain = family == .ipv4 ? AF_INET : AF_INET6
        let fd = try systemCall("socket") { Glibc.socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        socket = TestSocket(fd: fd)
        self.family = family
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        switch family {
        case .ipv4, .ipv6:
            try withLoopback(ipv6: family == .ipv6, port: requested) { address, length in
                try systemCall("bind") { bind(fd, address, length) }
            }
        case .ipv4ToDualStack:
            var off: CInt = 0
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, socklen_t(MemoryLayout<CInt>.size))
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_addr = in6addr_any
            address.sin6_port = requested.bigEndian
            try bindAddress(fd, &address)
        }
        try systemCall("listen") { listen(fd, 1024) }
        port = socket.localPort
    }

    /// Connects a new client (bound to `clientPort` if given) and accepts it.
    public func connectPair(clientPort: UInt16 = 0) throws -> (client: TestSocket, server: TestSocket) {
        let ipv6 = family == .ipv6
        let fd = try systemCall("socket") { Glibc.socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let client = TestSocket(fd: fd)
        if clientPort != 0 {
            var one: CInt = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
            try withLoopback(ipv6: ipv6, port: clientPort) { address, length in
                try systemCall("bind") { bind(fd, address, length) }
            }
        }
        try withLoopback(ipv6: ipv6, port: port) { address, length in
            try systemCall("connect") { connect(fd, address, length) }
        }
        let accepted = try systemCall("accept") { accept(socket.fd, nil, nil) }
        return (client, TestSocket(fd: accepted))
    }
}

/// Calls `body` with the loopback address (127.0.0.1 or ::1) and `port`.
func withLoopback<T>(ipv6: Bool, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) throws -> T {
    if ipv6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_addr = in6addr_loopback
        address.sin6_port = port.bigEndian
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
    var address = loopbackIPv4(port: port)
    return try withUnsafePointer(to: &address) {
        try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

func loopbackIPv4(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    address.sin_port = port.bigEndian
    return address
}

func bindAddress<A>(_ fd: CInt, _ address: inout A) throws {
    let length = socklen_t(MemoryLayout<A>.size)
    try withUnsafePointer(to: &address) { pointer in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            try systemCall("bind") { bind(fd, raw, length) }
        }
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
