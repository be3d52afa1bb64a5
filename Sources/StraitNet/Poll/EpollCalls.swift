import CStraitSystem
import StraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The Linux-only calls under the reactor, wrapped once like everything in `StraitSystem.SocketCall`
/// (errno read right after the call, `EINTR` retried). They live in StraitNet's Poll layer, epoll's
/// one user; their C declarations (which Swift's Glibc module lacks) come from the `CStraitSystem` shim.
enum EpollCall {
    static let input = UInt32(EPOLLIN.rawValue)
    static let output = UInt32(EPOLLOUT.rawValue)
    static let peerHangUp = UInt32(EPOLLRDHUP.rawValue)
    static let hangUp = UInt32(EPOLLHUP.rawValue)
    static let error = UInt32(EPOLLERR.rawValue)
    static let edgeTriggered = UInt32(truncatingIfNeeded: EPOLLET.rawValue)
    static let exclusive = UInt32(truncatingIfNeeded: EPOLLEXCLUSIVE.rawValue)

    /// `epoll_create1(EPOLL_CLOEXEC)`.
    static func create() throws(SystemCallError) -> CInt {
        try systemCall("epoll_create1") { epoll_create1(CInt(EPOLL_CLOEXEC)) }
    }

    /// `epoll_ctl(EPOLL_CTL_ADD)`; `data` comes back with every event for `fd`.
    static func add(_ epoll: CInt, _ fd: CInt, events: UInt32, data: UInt64) throws(SystemCallError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        try systemCall("epoll_ctl ADD") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
    }

    /// `epoll_ctl(EPOLL_CTL_MOD)`: replaces the interest set of `fd`, keeping `data`.
    static func modify(_ epoll: CInt, _ fd: CInt, events: UInt32, data: UInt64) throws(SystemCallError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        try systemCall("epoll_ctl MOD") { epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) }
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`. Removing before `close` matters: a descriptor duplicated into a
    /// child process would otherwise keep reporting events for a freed object.
    static func remove(_ epoll: CInt, _ fd: CInt) throws(SystemCallError) {
        var event = epoll_event()
        try systemCall("epoll_ctl DEL") { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event) }
    }

    /// `epoll_wait(2)`: how many entries of `events` were filled, 0 on timeout.
    static func wait(_ epoll: CInt, _ events: UnsafeMutablePointer<epoll_event>, capacity: Int, timeoutMilliseconds: CInt) throws(SystemCallError) -> Int {
        Int(try systemCall("epoll_wait") { epoll_wait(epoll, events, CInt(capacity), timeoutMilliseconds) })
    }

    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`: the loop's wake-up descriptor.
    static func eventDescriptor() throws(SystemCallError) -> CInt {
        try systemCall("eventfd") { eventfd(0, CInt(EFD_NONBLOCK) | CInt(EFD_CLOEXEC)) }
    }

    /// Adds one to an eventfd; a full counter (`EAGAIN`) already means "wake up".
    static func signal(_ fd: CInt) throws(SystemCallError) {
        var one: UInt64 = 1
        _ = try nonBlockingCall("write eventfd") { Glibc.write(fd, &one, 8) }
    }

    /// Reads and resets an eventfd counter.
    static func drain(_ fd: CInt) throws(SystemCallError) {
        var value: UInt64 = 0
        _ = try nonBlockingCall("read eventfd") { Glibc.read(fd, &value, 8) }
    }

    /// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`; `.wouldBlock` when the backlog is empty
    /// (``SocketCall/accept(_:)``, the one wrapper).
    static func accept(_ fd: CInt) throws(SystemCallError) -> NonBlockingResult<CInt> {
        try SocketCall.accept(fd)
    }

    static let tcpNoDelay = CInt(TCP_NODELAY)
}
