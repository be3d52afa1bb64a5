import Atomics
import CStraitSystem
import DequeModule
import HeapModule
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Something a loop polls: a connection, a listening socket, or any descriptor put on the loop
/// with ``EventLoop/register(descriptor:interest:handler:)``. The loop stores an unretained
/// pointer to it in the epoll entry and calls `handleEvents` on the loop's thread. Public only
/// as the base of ``Connection`` and ``DescriptorRegistration``; it cannot be subclassed outside
/// StraitNet.
///
/// Whoever registers a source passes one retain to the loop (``EventLoop/register(_:events:)``);
/// the loop gives it back after the source deregisters, at the end of the loop iteration, so an
/// event already fetched in the same `epoll_wait` batch never sees a freed object. Events carry
/// the object, not the descriptor number, so an event fetched for a descriptor that was closed
/// and whose number was reused in the same batch reaches the old, deregistered object, which
/// drops it: stale events are dropped by construction, as with SwiftNIO's registration ids.
public class Selectable {
    /// The descriptor. A ``Connection`` (or listener) owns it and closes it when it closes; a
    /// ``DescriptorRegistration`` only borrows it from whoever registered it.
    public let fd: CInt
    /// The loop that polls it; everything about it happens on this loop's thread.
    public let loop: EventLoop

    init(fd: CInt, loop: EventLoop) {
        self.fd = fd
        self.loop = loop
    }

    /// Called on `loop`'s thread with the epoll event bits.
    func handleEvents(_ events: UInt32) {
        preconditionFailure("\(type(of: self)) must override handleEvents")
    }
}

/// A callback the loop's timer heap can fire without allocating a closure per timer.
protocol TimerTarget: AnyObject {
    /// Called on the loop's thread at or after the deadline. Targets check their own state: a
    /// timer is never removed from the heap, only ignored when it no longer applies.
    func timerFired(tag: UInt64)
}

/// One epoll reactor on its own thread: I/O events, then queued tasks, then due timers, forever.
///
/// Everything a loop owns (its connections' state, its timer heap) is touched only on its thread;
/// other threads talk to it through ``execute(_:)``, which queues a task and wakes the loop with an
/// eventfd write (at most one write per wake-up, however many tasks are queued).
/// Loop-confined state is `@exclusivity(unchecked)`, as in ``LinkBuffer``.
public final class EventLoop: @unchecked Sendable {
    /// The loop's position in its group.
    public let index: Int
    let epoll: CInt
    private let wakeDescriptor: CInt
    /// Tasks queued for the loop's thread; `closed` once the thread has run its last ones, after
    /// which a task runs on the thread that queues it (nothing else touches the loop's state then).
    private let tasks = Mutex<(queued: Deque<LoopTask>, closed: Bool)>(([], false))
    private let wakePending = ManagedAtomic<Bool>(false)
    private let stopRequested = ManagedAtomic<Bool>(false)
    private let threadID = ManagedAtomic<UInt>(0)
    @exclusivity(unchecked) private var timers = Heap<TimerEntry>()
    @exclusivity(unchecked) private var timerSequence: UInt64 = 0
    /// Monotonic time (`CLOCK_MONOTONIC`, nanoseconds) read once when the current iteration woke
    /// up: what handlers and timers on this loop should use as "now" (free, unlike a clock read).
    /// Loop thread only.
    @exclusivity(unchecked) public private(set) var now: UInt64 = SocketCall.monotonicNanoseconds()
    @exclusivity(unchecked) private var deferredReleases: [Unmanaged<Selectable>] = []
    @exclusivity(unchecked) private var runningTasks = Deque<LoopTask>()
    /// Head of this loop's intrusive list of live connections.
    @exclusivity(unchecked) var firstConnection: Connection?
    /// Live connections on this loop.
    @exclusivity(unchecked) private(set) var connectionCount = 0
    private let finished = Mutex<Bool>(false)

    static let eventBatch = 256

    init(index: Int) throws(SystemCallError) {
        self.index = index
        epoll = try EpollCall.create()
        do {
            wakeDescriptor = try EpollCall.eventDescriptor()
            try EpollCall.add(epoll, wakeDescriptor, events: EpollCall.input | EpollCall.edgeTriggered, data: 0)
        } catch {
            closeDescriptor(epoll)
            throw error
        }
        deferredReleases.reserveCapacity(64)
        runningTasks.reserveCapacity(64)
    }

    /// True on the loop's own thread.
    public var inEventLoop: Bool {
        threadID.load(ordering: .relaxed) == UInt(pthread_self())
    }

    /// Runs `body` on the loop's thread, after the current batch of events. Safe from any thread;
    /// costs the closure's allocation and, when the loop sleeps, one eventfd write. On a loop that
    /// has stopped, `body` runs at once on the calling thread, so a caller waiting for it (a
    /// listener hand-over retiring a server whose group already shut down) is answered.
    public func execute(_ body: @escaping @Sendable () -> Void) {
        enqueue(.closure(body))
    }

    func enqueue(_ task: LoopTask) {
        let queued = tasks.withLock { state in
            if !state.closed { state.queued.append(task) }
            return !state.closed
        }
        guard queued else {
            Self.perform(task)
            return
        }
        if !inEventLoop && !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            try? EpollCall.signal(wakeDescriptor)
        }
    }

    /// Adds `source` to this loop's epoll set, handing the loop one retain of it. Safe from any
    /// thread: the main reactor uses it to put accepted sockets straight into a sub-reactor.
    func register(_ source: Selectable, events: UInt32) throws(SystemCallError) {
        let pointer = Unmanaged.passRetained(source)
        do {
            try EpollCall.add(epoll, source.fd, events: events, data: UInt64(UInt(bitPattern: pointer.toOpaque())))
        } catch {
            pointer.release()
            throw error
        }
    }

    /// Removes `source` from epoll and closes its descriptor; the loop's retain is given back at
    /// the end of this iteration. Loop thread only.
    func deregisterAndClose(_ source: Selectable) {
        deregister(source)
        closeDescriptor(source.fd)
    }

    /// Removes `source` from epoll, leaving its descriptor open; the loop's retain is given back
    /// at the end of this iteration. Loop thread only.
    func deregister(_ source: Selectable) {
        try? EpollCall.remove(epoll, source.fd)
        deferredReleases.append(Unmanaged.passUnretained(source))
    }

    /// Calls `target.timerFired(tag:)` on this loop at `deadline` (monotonic nanoseconds) or later.
    /// Loop thread only; no allocation once the heap has grown.
    func schedule(at deadline: UInt64, target: TimerTarget, tag: UInt64) {
        timerSequence &+= 1
        timers.insert(TimerEntry(deadline: deadline, sequence: timerSequence, target: target, tag: tag))
    }

    /// Runs `body` on the loop after `delay`, unless cancelled first. Safe from any thread; costs a
    /// ``ScheduledTask`` and the closure, plus a queued task from other threads. It shares the
    /// loop's one timer heap with ``LoopTimer`` and the connections' deadlines.
    @discardableResult
    public func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledTask {
        let task = ScheduledTask(body)
        let deadline = SocketCall.monotonicNanoseconds() + delay.nanoseconds
        if inEventLoop {
            schedule(at: deadline, target: task, tag: 0)
        } else {
            execute { [self] in schedule(at: deadline, target: task, tag: 0) }
        }
        return task
    }

    // MARK: Connection list

    func link(_ connection: Connection) {
        connection.nextOnLoop = firstConnection
        firstConnection?.previousOnLoop = connection
        firstConnection = connection
        connectionCount += 1
    }

    func unlink(_ connection: Connection) {
        if let previous = connection.previousOnLoop {
            previous.nextOnLoop = connection.nextOnLoop
        } else if firstConnection === connection {
            firstConnection = connection.nextOnLoop
        } else {
            return  // never linked
        }
        connection.nextOnLoop?.previousOnLoop = connection.previousOnLoop
        connection.nextOnLoop = nil
        connection.previousOnLoop = nil
        connectionCount -= 1
    }

    /// Every live connection on this loop, for shutdown. Loop thread only.
    func forEachConnection(_ body: (Connection) -> Void) {
        var cursor = firstConnection
        while let connection = cursor {
            cursor = connection.nextOnLoop
            body(connection)
        }
    }

    // MARK: Running

    /// The loop's body: runs on the calling thread until ``stop()``.
    func run() {
        threadID.store(UInt(pthread_self()), ordering: .relaxed)
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Self.eventBatch)
        defer { events.deallocate() }
        while !stopRequested.load(ordering: .relaxed) {
            let count: Int
            do {
                count = try EpollCall.wait(epoll, events, capacity: Self.eventBatch, timeoutMilliseconds: nextTimeout())
            } catch {
                preconditionFailure("epoll_wait failed on loop \(index): \(error)")
            }
            now = SocketCall.monotonicNanoseconds()
            for slot in 0..<count {
                let event = events[slot]
                if event.data.u64 == 0 {
                    // Drain first, then clear the flag. The other order loses wake-ups: a producer
                    // that sees the flag cleared writes the eventfd, the drain then eats its write,
                    // and epoll (edge-triggered, re-polling the now empty eventfd) reports nothing,
                    // while the flag stays set, so no later producer writes again and their tasks
                    // wait until some I/O or timer happens to wake the loop.
                    try? EpollCall.drain(wakeDescriptor)
                    wakePending.store(false, ordering: .sequentiallyConsistent)
                    continue
                }
                let source = Unmanaged<Selectable>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(event.data.u64))!).takeUnretainedValue()
                source.handleEvents(event.events)
            }
            runTasks()
            fireTimers()
            releaseDeferred()
        }
        // Stopping: close what is left, run what was queued so waiters are answered.
        forEachConnection { $0.close(reason: .shutdown) }
        runTasks()
        // Tasks queued while those ran, then none: from here a task runs on its caller's thread.
        while !tasks.withLock({ state in
            state.closed = state.queued.isEmpty
            return state.closed
        }) {
            runTasks()
        }
        releaseDeferred()
        finished.withLock { $0 = true }
    }

    private func nextTimeout() -> CInt {
        if tasks.withLock({ !$0.queued.isEmpty }) { return 0 }
        guard let first = timers.min else { return -1 }
        let current = SocketCall.monotonicNanoseconds()
        if first.deadline <= current { return 0 }
        return CInt(min((first.deadline - current + 999_999) / 1_000_000, UInt64(Int32.max)))
    }

    private func runTasks() {
        tasks.withLock { swap(&$0.queued, &runningTasks) }
        while let task = runningTasks.popFirst() { Self.perform(task) }
    }

    private static func perform(_ task: LoopTask) {
        switch task {
        case .closure(let body): body()
        case .drainOutbox(let connection): connection.drainOutbox()
        case .handlerFinished(let connection): connection.handlerFinished()
        case .dispatch(let connection): connection.readAndDispatch()
        }
    }

    private func fireTimers() {
        while let first = timers.min, first.deadline <= now {
            let entry = timers.removeMin()
            entry.target.timerFired(tag: entry.tag)
        }
    }

    private func releaseDeferred() {
        for source in deferredReleases { source.release() }
        deferredReleases.removeAll(keepingCapacity: true)
    }

    /// Asks the loop to finish its iteration, close its connections and return from ``run()``.
    func stop() {
        stopRequested.store(true, ordering: .relaxed)
        if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            try? EpollCall.signal(wakeDescriptor)
        }
    }

    /// Closes the loop's descriptors; only after ``run()`` has returned.
    func closeDescriptors() {
        precondition(finished.withLock { $0 }, "closing a loop that still runs")
        closeDescriptor(wakeDescriptor)
        closeDescriptor(epoll)
    }
}

/// Work queued for a loop from another thread. The connection cases carry no closure, so the
/// worker pool and cross-thread sends do not allocate to reach the loop.
enum LoopTask {
    case closure(@Sendable () -> Void)
    case drainOutbox(Connection)
    case handlerFinished(Connection)
    case dispatch(Connection)
}

struct TimerEntry: Comparable {
    let deadline: UInt64
    let sequence: UInt64
    let target: TimerTarget
    let tag: UInt64

    static func < (lhs: TimerEntry, rhs: TimerEntry) -> Bool {
        (lhs.deadline, lhs.sequence) < (rhs.deadline, rhs.sequence)
    }

    static func == (lhs: TimerEntry, rhs: TimerEntry) -> Bool {
        lhs.deadline == rhs.deadline && lhs.sequence == rhs.sequence
    }
}

/// A closure scheduled on a loop with ``EventLoop/schedule(after:_:)``; ``cancel()`` stops it from
/// running if it has not run yet. One-shot and usable from any thread, at the cost of an object
/// and a closure per call; a handler on the loop that re-arms the same deadline uses ``LoopTimer``.
public final class ScheduledTask: TimerTarget, Sendable {
    private let body: @Sendable () -> Void
    private let cancelled = ManagedAtomic<Bool>(false)

    init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    /// Keeps the closure from running, if it has not started yet. Safe from any thread; the heap
    /// entry stays until its deadline and is then ignored.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }

    func timerFired(tag: UInt64) {
        if !cancelled.exchange(true, ordering: .relaxed) { body() }
    }
}

extension Duration {
    /// Whole nanoseconds, saturating at zero for negative durations.
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}
