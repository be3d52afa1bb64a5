import StraitSystem

/// What a registered descriptor is polled for: the `events` word of `epoll_ctl(2)`.
///
/// Level-triggered unless ``edgeTriggered`` is in the set. Level-triggered polling reports a
/// condition for as long as it holds, so the interest set must follow the state (poll for
/// ``writable`` only while bytes wait, drop ``readable`` while there is no room to read into);
/// edge-triggered polling reports each change once, so the handler must read or write until the
/// call would block. `EPOLLHUP` and `EPOLLERR` are always reported, whatever the set.
public struct Interest: OptionSet, Sendable, Hashable {
    /// The `epoll_ctl` event bits.
    public let rawValue: UInt32

    /// Wraps `epoll_ctl` event bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `EPOLLIN`: bytes (or a connection, or end of stream) to read.
    public static let readable = Interest(rawValue: EpollCall.input)
    /// `EPOLLOUT`: room in the send buffer.
    public static let writable = Interest(rawValue: EpollCall.output)
    /// `EPOLLRDHUP`: the peer shut down its write side (or closed). Alone, it is what a socket
    /// whose bytes the kernel moves (a sockmap member) needs: no wake-up per arrival, one at the end.
    public static let readHangUp = Interest(rawValue: EpollCall.peerHangUp)
    /// `EPOLLET`: report changes instead of states.
    public static let edgeTriggered = Interest(rawValue: EpollCall.edgeTriggered)
    /// `EPOLLEXCLUSIVE`: of the loops that poll one descriptor (a listener every loop accepts on),
    /// only one wakes per event. Only at registration: epoll refuses it in ``DescriptorRegistration/setInterest(_:)``.
    public static let exclusive = Interest(rawValue: EpollCall.exclusive)
}

/// What happened to a registered descriptor: the `events` word `epoll_wait(2)` returned.
public struct IOEvents: OptionSet, Sendable, Hashable {
    /// The `epoll_wait` event bits.
    public let rawValue: UInt32

    /// Wraps `epoll_wait` event bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `EPOLLIN`.
    public static let readable = IOEvents(rawValue: EpollCall.input)
    /// `EPOLLOUT`.
    public static let writable = IOEvents(rawValue: EpollCall.output)
    /// `EPOLLRDHUP`: the peer will send nothing more.
    public static let readHangUp = IOEvents(rawValue: EpollCall.peerHangUp)
    /// `EPOLLHUP`: both directions are shut (or the pipe's other end closed).
    public static let hangUp = IOEvents(rawValue: EpollCall.hangUp)
    /// `EPOLLERR`: a pending socket error (read it with `SO_ERROR`, or from the next call).
    public static let error = IOEvents(rawValue: EpollCall.error)
}

/// Who hears about a registered descriptor, like a Netpoll `FDOperator`'s callbacks.
public protocol DescriptorHandler: AnyObject {
    /// Called on the registration's loop thread with what the descriptor is ready for. Only while
    /// `registration` is registered: after ``DescriptorRegistration/deregister()`` returns, no
    /// call comes, not even for an event the loop fetched earlier in the same pass.
    func descriptorReady(_ registration: DescriptorRegistration, events: IOEvents)
}

/// One descriptor on one loop, made by ``EventLoop/register(descriptor:interest:handler:)``.
///
/// **Ownership.** The descriptor stays its registrant's: the registration never closes it.
/// Deregister first, then close; closing a descriptor that is still registered can leave its
/// epoll entry alive (when the file is shared with another descriptor or process) and a later
/// `deregister()` of this registration would then remove whatever now has that number.
/// The loop holds the registration, and the registration holds its handler, from
/// `register` until `deregister()`; a handler that keeps its registrations forms a cycle that
/// `deregister()` breaks.
///
/// **Stale events.** The epoll entry carries this object, not the descriptor number, and the
/// loop keeps it alive to the end of the pass in which it was deregistered. An event fetched
/// for it before it was deregistered (say an earlier handler in the same batch closed the
/// descriptor and another registration took over the number) reaches this object and is
/// dropped; it never reaches the new registration.
///
/// **Threads.** ``setInterest(_:)`` and ``deregister()`` on the loop's thread only.
public final class DescriptorRegistration: Selectable, @unchecked Sendable {
    /// What the descriptor is polled for now. Loop thread only.
    @exclusivity(unchecked) public private(set) var interest: Interest
    /// True from registration until ``deregister()``. Loop thread only.
    @exclusivity(unchecked) public private(set) var isRegistered = true
    @exclusivity(unchecked) private var handler: (any DescriptorHandler)?

    init(fd: CInt, loop: EventLoop, interest: Interest, handler: any DescriptorHandler) {
        self.interest = interest
        self.handler = handler
        super.init(fd: fd, loop: loop)
    }

    /// Replaces the interest set with `EPOLL_CTL_MOD`; no syscall when it is unchanged. An empty
    /// set keeps the descriptor registered and reports only hang-ups and errors. Loop thread only.
    public func setInterest(_ interest: Interest) throws(SystemCallError) {
        precondition(loop.inEventLoop, "DescriptorRegistration.setInterest is for the loop's thread")
        guard isRegistered, interest != self.interest else { return }
        try EpollCall.modify(loop.epoll, fd, events: interest.rawValue, data: handle)
        self.interest = interest
    }

    /// Takes the descriptor off the loop (`EPOLL_CTL_DEL`) and lets the handler go; the descriptor
    /// stays open, for its owner to close. Calling it again does nothing. Loop thread only.
    public func deregister() {
        precondition(loop.inEventLoop, "DescriptorRegistration.deregister is for the loop's thread")
        guard isRegistered else { return }
        isRegistered = false
        handler = nil
        loop.deregister(self)
    }

    /// The epoll entry's `data`: this object's address, which the loop turns back into it.
    private var handle: UInt64 { UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) }

    override func handleEvents(_ events: UInt32) {
        guard isRegistered, let handler else { return }
        handler.descriptorReady(self, events: IOEvents(rawValue: events))
    }
}

extension EventLoop {
    /// Puts `descriptor` on this loop: `handler` hears, on this loop's thread, what it becomes
    /// ready for among `interest` (plus hang-ups and errors, always), until the returned
    /// registration is deregistered. For pipes, eventfds, timerfds, sockets the proxy relays
    /// itself, sockmap members: anything `epoll` can poll.
    ///
    /// Costs one `epoll_ctl` and one object; each event costs one call through the handler, no
    /// allocation and no lookup. The descriptor stays the caller's (see ``DescriptorRegistration``
    /// for the order of deregistering and closing). Safe from any thread; the handler can be called
    /// before this returns, on the loop's thread.
    public func register(descriptor: CInt, interest: Interest, handler: any DescriptorHandler) throws(SystemCallError) -> DescriptorRegistration {
        let registration = DescriptorRegistration(fd: descriptor, loop: self, interest: interest, handler: handler)
        try register(registration, events: interest.rawValue)
        return registration
    }
}
