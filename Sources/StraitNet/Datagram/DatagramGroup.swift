import Atomics
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// UDP sockets bound to one address with `SO_REUSEPORT`, spread over a loop group, read and written
/// in batches (`recvmmsg`/`sendmmsg`, up to 64 datagrams per syscall).
///
/// Which socket gets a datagram is the kernel's choice: its 4-tuple hash, or the ``SocketSteering``
/// given (StraitSteer keeps a session's datagrams on one socket, whatever their source port).
/// Members join and leave while datagrams flow: a leaving member is first taken out of the
/// steering, then, after a short settle time, its queue is drained through the handler and only then
/// is it closed, so nothing steered to it is dropped.
///
/// The group owns its sockets; ``close()`` closes them all. Handlers run on the socket's loop.
public final class DatagramGroup: @unchecked Sendable {
    /// Called on a member's loop with the datagrams it just received (slots `0..<batch.count`).
    /// The batch is reused after the call returns; reply with ``DatagramSocket/send(_:range:)``.
    public typealias Handler = @Sendable (_ socket: DatagramSocket, _ batch: DatagramBatch) -> Void

    /// The loops the sockets run on, one socket per loop; not owned: shut the group down after this one.
    public let group: EventLoopGroup
    /// The bound address (with the kernel's port when port 0 was asked for).
    public let address: SocketAddress
    let steering: (any SocketSteering)?
    let handler: Handler
    private let state = Mutex<(members: [DatagramSocket], nextIndex: Int)>(([], 0))
    /// How long a leaving member waits after the steering stopped choosing it before it starts
    /// draining, for datagrams the kernel chose it for just before.
    public var leaveSettleTime: Duration = .milliseconds(5)
    /// A leaving member closes once this many drains in a row, `leaveDrainInterval` apart, found its
    /// queue empty (on a loaded machine a datagram chosen before the map update can still land after
    /// the first drain), or after `leaveDrainLimit` in all.
    public var leaveQuietDrains = 3
    /// How long to wait between the drains that check a leaving socket's receive queue.
    public var leaveDrainInterval: Duration = .milliseconds(2)
    /// The longest a leave waits for its quiet drains before it closes the socket anyway.
    public var leaveDrainLimit: Duration = .milliseconds(250)

    /// Binds `socketCount` sockets (default: one per loop) on `address` and starts reading.
    public init(
        address: SocketAddress, group: EventLoopGroup, socketCount: Int? = nil, steering: (any SocketSteering)? = nil,
        handler: @escaping Handler
    ) throws {
        precondition((socketCount ?? 1) >= 1, "a datagram group needs at least one socket")
        self.group = group
        self.steering = steering
        self.handler = handler
        let first = try Self.bind(address)
        self.address = try SocketAddress.local(of: first)
        try start(fd: first, weight: 1)
        for _ in 1..<(socketCount ?? group.loops.count) { _ = try addMember() }
    }

    /// The current members, in joining order.
    public var members: [DatagramSocket] { state.withLock { $0.members } }

    /// Binds one more socket into the group and starts reading it; the steering starts choosing it.
    @discardableResult
    public func addMember(weight: Int = 1) throws -> DatagramSocket {
        try start(fd: try Self.bind(address), weight: weight)
    }

    /// Takes `member` out of the steering, lets it read what was already steered to it, then closes
    /// it. Returns when it is closed; blocks the caller meanwhile (a few milliseconds), so never
    /// call it from one of the group's loops.
    public func removeMember(_ member: DatagramSocket) throws {
        guard state.withLock({ state in
            guard let index = state.members.firstIndex(where: { $0 === member }) else { return false }
            state.members.remove(at: index)
            return true
        }) else { return }
        try steering?.memberLeaving(member.fd)
        let closed = ManagedAtomic<Bool>(false)
        let (quietDrains, interval, limit) = (leaveQuietDrains, leaveDrainInterval, leaveDrainLimit)
        @Sendable func drain(quiet: Int, elapsed: Duration) {
            let before = member.received
            member.readAll()
            let quiet = member.received == before ? quiet + 1 : 0
            if quiet >= quietDrains || elapsed >= limit {
                member.close()
                closed.store(true, ordering: .releasing)
            } else {
                member.loop.schedule(after: interval) { drain(quiet: quiet, elapsed: elapsed + interval) }
            }
        }
        member.loop.schedule(after: leaveSettleTime) { drain(quiet: 0, elapsed: .zero) }
        while !closed.load(ordering: .acquiring) { usleep(200) }
    }

    /// Closes every member at once (no drain).
    public func close() {
        let members = state.withLock { state in defer { state.members = [] }; return state.members }
        for member in members {
            let done = ManagedAtomic<Bool>(false)
            member.loop.execute {
                member.close()
                done.store(true, ordering: .releasing)
            }
            while !done.load(ordering: .acquiring) { usleep(100) }
        }
    }

    private func start(fd: CInt, weight: Int) throws -> DatagramSocket {
        let (loop, index) = state.withLock { state in
            defer { state.nextIndex += 1 }
            return (group.loops[state.nextIndex % group.loops.count], state.nextIndex)
        }
        let member = DatagramSocket(fd: fd, loop: loop, index: index, handler: handler)
        do {
            try steering?.memberJoined(fd, weight: weight)
            try loop.register(member, events: EpollCall.input | EpollCall.edgeTriggered)
        } catch {
            try? steering?.memberLeaving(fd)
            closeDescriptor(fd)
            throw error
        }
        state.withLock { $0.members.append(member) }
        // Datagrams may have arrived between bind and registration: edge-triggered epoll would not report them.
        loop.execute { member.readAll() }
        return member
    }

    static func bind(_ address: SocketAddress) throws(SystemCallError) -> CInt {
        let fd = try SocketCall.socket(domain: address.family, type: CInt(SOCK_DGRAM.rawValue))
        do throws(SystemCallError) {
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1)
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_RCVBUF, value: 4 << 20)
            try SocketCall.bind(fd, to: address)
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }
}

/// One UDP socket of a ``DatagramGroup``, polled by one loop. Its batch and handler run only there.
public final class DatagramSocket: Selectable, @unchecked Sendable {
    /// The member's number in its group, in joining order (never reused).
    public let index: Int
    let handler: DatagramGroup.Handler
    let batch = DatagramBatch(capacity: 64)
    private let receivedCount = ManagedAtomic<Int>(0)
    private var closed = false

    init(fd: CInt, loop: EventLoop, index: Int, handler: @escaping DatagramGroup.Handler) {
        self.index = index
        self.handler = handler
        super.init(fd: fd, loop: loop)
    }

    /// Datagrams this socket has received. Safe from any thread.
    public var received: Int { receivedCount.load(ordering: .relaxed) }

    override func handleEvents(_ events: UInt32) { readAll() }

    /// Reads batches until the queue is empty, handing each to the handler. Loop only.
    func readAll() {
        while !closed {
            do {
                guard case .done(let count) = try batch.receive(from: fd), count > 0 else { return }
                receivedCount.wrappingIncrement(by: count, ordering: .relaxed)
                handler(self, batch)
            } catch {
                return
            }
        }
    }

    /// Sends slots `range` of `batch` (default: all it holds) to their peers with `sendmmsg`; returns
    /// how many the kernel took (datagrams it could not take now are dropped, as UDP would). Loop only.
    @discardableResult
    public func send(_ batch: DatagramBatch, range: Range<Int>? = nil) -> Int {
        guard case .done(let sent)? = try? batch.send(on: fd, range: range) else { return 0 }
        return sent
    }

    func close() {
        guard !closed else { return }
        closed = true
        loop.deregisterAndClose(self)
    }
}
