import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Plain sockets on 127.0.0.1 of the calling thread's network namespace, for the steering tests
/// and `strait bench steer`: descriptors the caller owns and closes with `closeDescriptor`. Each
/// call is one or a few syscalls through ``SocketCall``; none allocates but the datagram arrays.
public enum RawSocket {
    /// A TCP listener (non-blocking, `SO_REUSEPORT`) on 127.0.0.1:`port` (0: the kernel picks).
    public static func reuseportListener(port: UInt16, backlog: CInt = 4096) throws(SystemCallError) -> CInt {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue))
        do throws(SystemCallError) {
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1)
            try SocketCall.bind(fd, to: .loopback(port: port))
            try SocketCall.listen(fd, backlog: backlog)
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// A UDP socket (non-blocking, `SO_REUSEPORT` when asked) bound to `address`:`port` (127.0.0.1 by
    /// default), with a receive buffer of `receiveBuffer` bytes when given.
    public static func udp(address: IPAddress = IPAddress("127.0.0.1")!, port: UInt16, reusePort: Bool, receiveBuffer: CInt? = nil) throws(SystemCallError) -> CInt {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_DGRAM.rawValue))
        do throws(SystemCallError) {
            if reusePort { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1) }
            if let receiveBuffer { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_RCVBUF, value: receiveBuffer) }
            try SocketCall.bind(fd, to: .ip(address, port: port))
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// The local port `fd` is bound to.
    public static func port(of fd: CInt) throws(SystemCallError) -> UInt16 {
        try SocketCall.localAddress(of: fd).port ?? 0
    }

    /// A blocking TCP connect to 127.0.0.1:`port`, optionally from `sourceAddress` (IPv4 in network
    /// byte order, as ``IPAddress/v4(_:)`` holds it) and `sourcePort`.
    public static func connect(port: UInt16, sourceAddress: UInt32? = nil, sourcePort: UInt16 = 0) throws(SystemCallError) -> CInt {
        let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)
        do throws(SystemCallError) {
            if sourceAddress != nil || sourcePort != 0 {
                try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
                let source = sourceAddress.map { IPAddress.v4($0) } ?? IPAddress("127.0.0.1")!
                try SocketCall.bind(fd, to: .ip(source, port: sourcePort))
            }
            try SocketCall.connect(fd, to: .loopback(port: port))
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// Accepts everything queued on a non-blocking listener; the caller closes the returned sockets.
    public static func acceptQueued(_ listener: CInt) -> [CInt] {
        var accepted: [CInt] = []
        while case .done(let fd)? = try? SocketCall.accept(listener) { accepted.append(fd) }
        return accepted
    }

    /// Sends one datagram from `fd` to 127.0.0.1:`port`.
    public static func sendDatagram(_ fd: CInt, _ bytes: [UInt8], toPort port: UInt16) throws {
        _ = try bytes.withUnsafeBytes { try SocketCall.send(fd, $0, to: .loopback(port: port)) }
    }

    /// Every datagram waiting on a socket (read without blocking), as byte arrays of at most 2 KiB.
    public static func drainDatagrams(_ fd: CInt) -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while case .done(let count)? = try? buffer.withUnsafeMutableBytes({ try RelayCall.receive(fd, into: $0) }) {
            datagrams.append(Array(buffer.prefix(count)))
        }
        return datagrams
    }
}
