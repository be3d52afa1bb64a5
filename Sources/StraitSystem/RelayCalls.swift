import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The calls a TCP relay needs beyond `SocketCall`: pipes and `splice(2)` for zero-copy forwarding,
/// the network-namespace cookie that keys endpoint maps (the socket's own is
/// ``SocketCall/cookie(_:)``), the TCP counters that tell when forwarded bytes have
/// all been handed to the next socket, and the abortive close that turns into a reset.
public enum RelayCall {
    /// A non-blocking, close-on-exec pipe of about `size` bytes, its two ends owned by the result.
    public static func pipe(size: Int = 1 << 20) throws(SystemCallError) -> OwnedPipe {
        var fds: [CInt] = [-1, -1]
        try systemCall("pipe2") { strait_pipe_nonblocking(&fds, CInt(size)) }
        return OwnedPipe(readEnd: OwnedDescriptor(taking: fds[0]), writeEnd: OwnedDescriptor(taking: fds[1]))
    }

    /// `splice(2)` of up to `length` bytes, non-blocking, moving pages where it can. `.done(0)` from
    /// a socket is end of stream.
    @inlinable
    public static func splice(from: CInt, to: CInt, length: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        // SPLICE_F_MOVE | SPLICE_F_NONBLOCK. Not SPLICE_F_MORE: on a socket it acts as MSG_MORE and
        // holds small writes back, which costs interactive traffic hundreds of milliseconds.
        let flags = UInt32(1 | 2)
        return try nonBlockingCall("splice") { strait_splice(from, to, length, flags) }
    }

    /// `recv(2)` without blocking.
    @inlinable
    public static func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("recv") { Glibc.recv(fd, buffer.baseAddress, buffer.count, CInt(MSG_DONTWAIT)) }
    }

    /// `send(2)` without blocking and without `SIGPIPE`.
    @inlinable
    public static func send(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("send") { Glibc.send(fd, bytes.baseAddress, bytes.count, CInt(MSG_DONTWAIT) | CInt(MSG_NOSIGNAL)) }
    }

    /// The cookie of the network namespace a socket lives in (`SO_NETNS_COOKIE`, Linux 5.14+), as
    /// BPF programs see it through `bpf_get_netns_cookie`.
    public static func networkNamespaceCookie(_ fd: CInt) throws(SystemCallError) -> UInt64 {
        var value: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        try systemCall("getsockopt SO_NETNS_COOKIE") { Glibc.getsockopt(fd, SOL_SOCKET, CInt(STRAIT_SO_NETNS_COOKIE), &value, &length) }
        return value
    }

    /// TCP_INFO's `tcpi_bytes_acked` and `tcpi_bytes_received`.
    public static func streamCounters(_ fd: CInt) throws(SystemCallError) -> (acked: UInt64, received: UInt64) {
        var acked: UInt64 = 0
        var received: UInt64 = 0
        try systemCall("getsockopt TCP_INFO") {
            withUnsafeMutablePointer(to: &acked) { ackedPointer in
                withUnsafeMutablePointer(to: &received) { receivedPointer in
                    ackedPointer.withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { a in
                        receivedPointer.withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { r in
                            strait_tcp_stream_counters(fd, a, r)
                        }
                    }
                }
            }
        }
        return (acked, received)
    }

    /// Bytes written to a TCP socket and not yet acknowledged (`SIOCOUTQ`).
    public static func unacknowledgedBytes(_ fd: CInt) throws(SystemCallError) -> Int {
        var value: CInt = 0
        try systemCall("ioctl SIOCOUTQ") { ioctl(fd, 0x5411 /* SIOCOUTQ = TIOCOUTQ */, &value) }
        return Int(value)
    }

    /// Closes with `SO_LINGER` zero, so the peer gets a reset instead of a FIN.
    public static func closeWithReset(_ fd: CInt) {
        try? SocketCall.setResetOnClose(fd)
        closeDescriptor(fd)
    }

    /// Sets `SO_RCVLOWAT`. On TCP this also runs the socket's data-ready callback when bytes are
    /// already queued, which is how a socket that just joined a sockmap gets its early bytes parsed.
    public static func setReceiveLowWatermark(_ fd: CInt, _ bytes: CInt) throws(SystemCallError) {
        try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_RCVLOWAT, value: bytes)
    }
}
