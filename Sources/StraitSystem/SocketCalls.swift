import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif


/// The portable socket and vectored-I/O calls the reactor library uses, each wrapped once.
/// (The Linux-only epoll and eventfd need C declarations the Glibc module lacks; StraitNet wraps
/// those the same way in `Poll/EpollCalls.swift`. `accept4` is here, through this module's shim.)
///
/// Every function here goes through ``systemCall(_:_:)`` or ``nonBlockingCall(_:_:)``, so errno is
/// read right after the call and `EINTR` is retried. Descriptors are plain `CInt`s: whoever receives
/// one from a function here owns it and closes it with ``closeDescriptor(_:)``.
public enum SocketCall {
    /// `socket(2)`, always non-blocking and close-on-exec.
    @inlinable
    public static func socket(domain: CInt, type: CInt, protocol proto: CInt = 0) throws(SystemCallError) -> CInt {
        try systemCall("socket") { Glibc.socket(domain, type | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), proto) }
    }

    /// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: the next connection in `fd`'s listen queue,
    /// or `.wouldBlock` when the queue is empty. The caller owns the returned descriptor. Out of
    /// descriptors or kernel memory it throws (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) and the
    /// connection stays queued. The corresponding C function is `accept4`.
    @inlinable
    public static func accept(_ fd: CInt) throws(SystemCallError) -> NonBlockingResult<CInt> {
        try nonBlockingCall("accept4") { strait_accept4_nonblocking(fd) }
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

    /// `bind(2)`.
    @inlinable
    public static func bind(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) throws(SystemCallError) {
        try systemCall("bind") { Glibc.bind(fd, address, length) }
    }

    /// `listen(2)`.
    @inlinable
    public static func listen(_ fd: CInt, backlog: CInt) throws(SystemCallError) {
        try systemCall("listen") { Glibc.listen(fd, backlog) }
    }

    /// `connect(2)` on a non-blocking socket: true when connected at once, false when the kernel
    /// answered `EINPROGRESS` and the result comes later as writability plus `SO_ERROR`.
    @inlinable
    public static func connect(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) throws(SystemCallError) -> Bool {
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

    /// `getsockname(2)` into caller storage large enough for any address family.
    @inlinable
    public static func localAddress(_ fd: CInt, into storage: UnsafeMutablePointer<sockaddr_storage>) throws(SystemCallError) -> socklen_t {
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
