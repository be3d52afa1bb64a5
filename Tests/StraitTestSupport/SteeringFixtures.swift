import Foundation
import StraitSystem

/// A private network namespace for one test: created on entry, deleted on exit even when the body
/// throws. Its loopback is up; `net.ipv4.tcp_migrate_req` can be set in it without touching the host.
public enum TestNamespace {
    public static func with<T>(migrateRequests: Bool = false, _ body: (NetworkNamespace) throws -> T) throws -> T {
        _ = LeftoverSweep.once
        let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        defer { namespace.delete() }
        if migrateRequests {
            try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        }
        return try body(namespace)
    }

    /// The same, for async tests: await inside instead of blocking a concurrency thread.
    public static func with<T>(migrateRequests: Bool = false, _ body: (NetworkNamespace) async throws -> T) async throws -> T {
        _ = LeftoverSweep.once
        let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        defer { namespace.delete() }
        if migrateRequests {
            try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        }
        return try await body(namespace)
    }
}

/// Raw sockets for steering tests: plain descriptors the caller closes, all on 127.0.0.1 of the
/// calling thread's namespace.
public enum RawSocket {
    /// A TCP listener (non-blocking, `SO_REUSEPORT`) on 127.0.0.1:`port` (0: the kernel picks).
    public static func reuseportListener(port: UInt16, backlog: CInt = 4096) throws -> CInt {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue))
        do {
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1)
            var address = loopbackIPv4(port: port)
            try bindAddress(fd, &address)
            try SocketCall.listen(fd, backlog: backlog)
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// A UDP socket (non-blocking, `SO_REUSEPORT` when asked) bound to 127.0.0.1:`port`.
    public static func udp(port: UInt16, reusePort: Bool) throws -> CInt {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_DGRAM.rawValue))
        do {
            if reusePort { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1) }
            var address = loopbackIPv4(port: port)
            try bindAddress(fd, &address)
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// The local port `fd` is bound to.
    public static func port(of fd: CInt) throws -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                try systemCall("getsockname") { getsockname(fd, raw, &length) }
            }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// A blocking TCP connect to 127.0.0.1:`port`, optionally from 127.0.0.1:`sourcePort`
    /// (or from `sourceAddress`, in network byte order).
    public static func connect(port: UInt16, sourceAddress: UInt32? = nil, sourcePort: UInt16 = 0) throws -> CInt {
        let fd = try systemCall("socket") { Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            if sourceAddress != nil || sourcePort != 0 {
                var one: CInt = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
                var source = loopbackIPv4(port: sourcePort)
                if let sourceAddress { source.sin_addr.s_addr = sourceAddress }
                try bindAddress(fd, &source)
            }
            try withLoopback(ipv6: false, port: port) { address, length in
                try systemCall("connect") { Glibc.connect(fd, address, length) }
            }
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// Accepts everything queued on a non-blocking listener; the caller closes the returned sockets.
    public static func acceptQueued(_ listener: CInt) -> [CInt] {
        var accepted: [CInt] = []
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return accepted }
            accepted.append(fd)
        }
    }

    /// Sends one datagram from `fd` to 127.0.0.1:`port`.
    public static func sendDatagram(_ fd: CInt, _ bytes: [UInt8], toPort port: UInt16) throws {
        var address = loopbackIPv4(port: port)
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = try systemCall("sendto") { sendto(fd, bytes, bytes.count, 0, raw, length) }
            }
        }
    }

    /// Every datagram waiting on a non-blocking socket, as byte arrays.
    public static func drainDatagrams(_ fd: CInt) -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while true {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count < 0 { return datagrams }
            datagrams.append(Array(buffer.prefix(count)))
        }
    }
}
