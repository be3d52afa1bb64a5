import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif


/// The socket and vectored-I/O calls, each wrapped once. Addresses are ``SocketAddress`` values.
/// (epoll and eventfd, which only the reactor uses, are wrapped the same way in StraitNet's
/// `Poll/EpollCalls.swift`, over declarations from the `CStraitSystem` shim.)
///
/// Every function here goes through ``systemCall(_:_:)`` or ``nonBlockingCall(_:_:)``, so errno is
/// read right after the call and `EINTR` is retried. Descriptors are plain `CInt`s: whoever receives
/// one from a function here owns it and closes it with ``closeDescriptor(_:)``. Each call is one
/// syscall unless its comment says otherwise, and none allocates.
public enum SocketCall {
    /// `socket(2)`, close-on-exec, and non-blocking unless `nonBlocking` is false (a test client or a
    /// benchmark peer that blocks on its own thread). The caller owns the descriptor.
    @inlinable
    public static func socket(domain: CInt, type: CInt, protocol proto: CInt = 0, nonBlocking: Bool = true) throws(SystemCallError) -> CInt {
        let flags = CInt(SOCK_CLOEXEC.rawValue) | (nonBlocking ? CInt(SOCK_NONBLOCK.rawValue) : 0)
        return try systemCall("socket") { Glibc.socket(domain, type | flags, proto) }
    }

    /// `setsockopt(2)` with an integer value.
    @inlinable
    public static func setOption(_ fd: CInt, level: CInt, name: CInt, value: CInt) throws(SystemCallError) {
        var value = value
        try systemCall("setsockopt") { Glibc.setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size)) }
    }

    /// `SO_LINGER` on with a zero timeout: the next `close` sends a reset (RST) instead of a FIN
    /// and drops whatever is still unsent.
    @inlinable
    public static func setResetOnClose(_ fd: CInt) throws(SystemCallError) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        try systemCall("setsockopt SO_LINGER") { Glibc.setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size)) }
    }

    /// `getsockopt(2)` for an integer option, e.g. `SO_ERROR` after a non-blocking connect.
    @inlinable
    public static func option(_ fd: CInt, level: CInt, name: CInt) throws(SystemCallError) -> CInt {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        try systemCall("getsockopt") { Glibc.getsockopt(fd, level, name, &value, &length) }
        return value
    }

    /// A close-on-exec socket of `type` (`SOCK_STREAM`, `SOCK_DGRAM`) in the family of `address`,
    /// non-blocking unless `nonBlocking` is false. The caller owns the descriptor.
    @inlinable
    public static func socket(for address: SocketAddress, type: CInt, nonBlocking: Bool = true) throws(SystemCallError) -> CInt {
        try socket(domain: address.family, type: type, nonBlocking: nonBlocking)
    }

    /// `accept4(2)` of one connection from a listening socket, close-on-exec, and non-blocking unless
    /// `nonBlocking` is false. `.wouldBlock` when a non-blocking listener's queue is empty; a blocking
    /// listener waits. The caller owns the accepted descriptor.
    @inlinable
    public static func accept(_ listener: CInt, nonBlocking: Bool = true) throws(SystemCallError) -> NonBlockingResult<CInt> {
        let flags = CInt(SOCK_CLOEXEC.rawValue) | (nonBlocking ? CInt(SOCK_NONBLOCK.rawValue) : 0)
        return try nonBlockingCall("accept4") { strait_accept4(listener, flags) }
    }

    /// `accept4(2)` of one connection from a blocking listener, close-on-exec, waiting until one is
    /// queued (or `SO_RCVTIMEO` passes: then the kernel's `EAGAIN` is thrown, as every other failure
    /// is, with its own errno). For tests and calibrations that accept on a thread of their own;
    /// reactors use ``accept(_:nonBlocking:)``. The caller owns the accepted descriptor.
    @inlinable
    public static func acceptWaiting(_ listener: CInt) throws(SystemCallError) -> CInt {
        try systemCall("accept4") { strait_accept4(listener, CInt(SOCK_CLOEXEC.rawValue)) }
    }

    /// `send(2)` of what fits now (`MSG_NOSIGNAL`: a closed peer is `EPIPE`, never `SIGPIPE`). On a
    /// blocking socket it waits for room, up to `SO_SNDTIMEO` (then `EAGAIN`, thrown). Returns how many
    /// bytes went out, which may be fewer than `bytes.count`.
    @inlinable
    public static func send(_ fd: CInt, _ bytes: UnsafeRawBufferPointer, flags: CInt = 0) throws(SystemCallError) -> Int {
        try systemCall("send") { Glibc.send(fd, bytes.baseAddress, bytes.count, flags | CInt(MSG_NOSIGNAL)) }
    }

    /// `recv(2)` into `buffer`: the count, 0 at end of stream. On a blocking socket it waits for data,
    /// up to `SO_RCVTIMEO` (then `EAGAIN`, thrown).
    @inlinable
    public static func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, flags: CInt = 0) throws(SystemCallError) -> Int {
        try systemCall("recv") { Glibc.recv(fd, buffer.baseAddress, buffer.count, flags) }
    }

    /// Bytes queued for reading now (`FIONREAD`).
    public static func readableBytes(_ fd: CInt) throws(SystemCallError) -> Int {
        var count: CInt = 0
        try systemCall("ioctl(FIONREAD)") { Glibc.ioctl(fd, UInt(FIONREAD), &count) }
        return Int(count)
    }

    /// `sendto(2)` of one datagram to `address` (`MSG_NOSIGNAL`); returns the bytes sent.
    public static func send(_ fd: CInt, _ bytes: UnsafeRawBufferPointer, to address: SocketAddress) throws(SystemCallError) -> Int {
        try address.withSockaddr { pointer, length throws(SystemCallError) in
            try systemCall("sendto") { Glibc.sendto(fd, bytes.baseAddress, bytes.count, CInt(MSG_NOSIGNAL), pointer, length) }
        }
    }

    /// `SO_RCVTIMEO` and `SO_SNDTIMEO`: how long a blocking receive or send waits before failing
    /// with `EAGAIN`, so a test or benchmark peer never hangs on a silent server.
    public static func setTimeouts(_ fd: CInt, seconds: Int) throws(SystemCallError) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        let length = socklen_t(MemoryLayout<timeval>.size)
        try systemCall("setsockopt SO_RCVTIMEO") { Glibc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, length) }
        try systemCall("setsockopt SO_SNDTIMEO") { Glibc.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, length) }
    }

    /// `bind(2)` to `address`. See ``SystemCallError/bindAdvice`` for what each failure means.
    @inlinable
    public static func bind(_ fd: CInt, to address: SocketAddress) throws(SystemCallError) {
        try address.withSockaddr { pointer, length throws(SystemCallError) in try bind(fd, pointer, length) }
    }

    /// `bind(2)` with a C address already built: the one raw call under ``bind(_:to:)``, internal
    /// so that every caller outside StraitSystem passes a ``SocketAddress``.
    @inlinable
    @usableFromInline
    static func bind(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) throws(SystemCallError) {
        try systemCall("bind") { Glibc.bind(fd, address, length) }
    }

    /// `listen(2)`.
    @inlinable
    public static func listen(_ fd: CInt, backlog: CInt) throws(SystemCallError) {
        try systemCall("listen") { Glibc.listen(fd, backlog) }
    }

    /// `connect(2)` to `address`. On a non-blocking socket: true when connected at once, false when
    /// the kernel answered `EINPROGRESS` and the result comes later as writability plus `SO_ERROR`.
    /// On a blocking socket it returns true once connected, or throws.
    @inlinable
    @discardableResult
    public static func connect(_ fd: CInt, to address: SocketAddress) throws(SystemCallError) -> Bool {
        try address.withSockaddr { pointer, length throws(SystemCallError) in try connect(fd, pointer, length) }
    }

    /// `connect(2)` with a C address already built, same results: the one raw call under
    /// ``connect(_:to:)``, internal so that every caller outside StraitSystem passes a ``SocketAddress``.
    @inlinable
    @usableFromInline
    @discardableResult
    static func connect(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) throws(SystemCallError) -> Bool {
        while true {
            if Glibc.connect(fd, address, length) == 0 { return true }
            let error = Errno(rawValue: Glibc.errno)
            switch error {
            case .interrupted: continue
            case .nowInProgress: return false
            default: throw SystemCallError("connect", error)
            }
        }
    }

    /// The address `fd` is bound to (`getsockname(2)`), e.g. the port the kernel chose for port 0.
    public static func localAddress(of fd: CInt) throws(SystemCallError) -> SocketAddress {
        var storage = sockaddr_storage()
        _ = try localAddress(fd, into: &storage)
        return SocketAddress(storage: storage)
    }

    /// The peer of a connected socket (`getpeername(2)`); `ENOTCONN` when it has none.
    public static func peerAddress(of fd: CInt) throws(SystemCallError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try withUnsafeMutablePointer(to: &storage) { storage throws(SystemCallError) in
            try storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer throws(SystemCallError) in
                _ = try systemCall("getpeername") { Glibc.getpeername(fd, pointer, &length) }
            }
        }
        return SocketAddress(storage: storage)
    }

    /// `getsockname(2)` into storage large enough for any address family; returns the length the
    /// kernel filled in. Internal: callers outside StraitSystem get a ``SocketAddress`` from ``localAddress(of:)``.
    static func localAddress(_ fd: CInt, into storage: UnsafeMutablePointer<sockaddr_storage>) throws(SystemCallError) -> socklen_t {
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer throws(SystemCallError) in
            _ = try systemCall("getsockname") { Glibc.getsockname(fd, pointer, &length) }
        }
        return length
    }

    /// `shutdown(2)`; `how` is `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
    @inlinable
    public static func shutdown(_ fd: CInt, how: CInt) throws(SystemCallError) {
        try systemCall("shutdown") { Glibc.shutdown(fd, how) }
    }

    /// `readv(2)`; `.done(0)` is end of stream.
    @inlinable
    public static func readv(_ fd: CInt, _ vectors: UnsafePointer<iovec>, _ count: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("readv") { Glibc.readv(fd, vectors, CInt(count)) }
    }

    /// `writev(2)`. Writes to a socket whose peer is gone fail with `EPIPE` rather than raising
    /// `SIGPIPE` only if the process ignores `SIGPIPE`; the reactor does that when it starts.
    @inlinable
    public static func writev(_ fd: CInt, _ vectors: UnsafePointer<iovec>, _ count: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("writev") { Glibc.writev(fd, vectors, CInt(count)) }
    }

    /// `read(2)` into one block: what ``readv(_:_:_:)`` does for a single vector, without the
    /// kernel importing an iovec array. `.done(0)` is end of stream.
    @inlinable
    public static func read(_ fd: CInt, _ buffer: UnsafeMutableRawPointer, _ count: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("read") { Glibc.read(fd, buffer, count) }
    }

    /// `write(2)` from one block: ``writev(_:_:_:)`` for a single vector. Same `SIGPIPE` caveat.
    @inlinable
    public static func write(_ fd: CInt, _ buffer: UnsafeRawPointer, _ count: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        try nonBlockingCall("write") { Glibc.write(fd, buffer, count) }
    }

    /// `unlink(2)`, for a Unix socket path left from an earlier run; a missing file is fine.
    @inlinable
    public static func unlinkIfPresent(_ path: String) throws(SystemCallError) {
        do {
            try systemCall("unlink \(path)") { Glibc.unlink(path) }
        } catch where error.errno == .noSuchFileOrDirectory {
            return
        }
    }

    /// Ignores `SIGPIPE` for the whole process, so writes to a closed peer return `EPIPE` instead of
    /// killing it. Every socket library on Linux needs this once; calling it again is harmless.
    public static func ignoreBrokenPipe() {
        _ = Glibc.signal(SIGPIPE, SIG_IGN)
    }

    /// `CLOCK_MONOTONIC` in nanoseconds (vDSO, no syscall on x86-64); timers and deadlines use it.
    @inlinable
    public static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}

extension SocketCall {
    /// Pins the calling thread to one CPU (`sched_setaffinity`), so the work it causes stays there.
    public static func pinCurrentThread(toCPU cpu: Int) throws(SystemCallError) {
        try systemCall("sched_setaffinity(cpu \(cpu))") { strait_pin_thread(CInt(cpu)) }
    }
}
