/// A reusable timer on one loop, one-shot or repeating: the proxy's 100 ms and 1 ms ticks,
/// deadlines a handler keeps pushing back.
///
/// It rides the loop's one timer heap, the one connections' idle, write and connect deadlines
/// use: arming costs one heap insertion (O(log n), no allocation once the heap has grown), firing
/// one removal and one call of `body` after the loop's I/O events and queued tasks. Timers due
/// at the same instant fire in the order they were armed. Cancelling or re-arming never removes
/// the old heap entry; it is left to expire and is then ignored (a generation number tells), so
/// a timer re-armed far ahead many times costs a heap entry per arming until those deadlines
/// pass.
///
/// **Threads.** Everything on the loop's thread; `body` runs there too. For a one-off closure
/// from another thread, ``EventLoop/schedule(after:_:)`` is the thread-safe form.
///
/// **Ownership.** While armed, the loop's heap holds the timer (and so `body` and what it
/// captures); a cancelled timer is let go once its stale entry expires.
public final class LoopTimer: TimerTarget {
    /// The loop whose thread arms and fires it.
    public let loop: EventLoop
    private let body: () -> Void
    /// Bumped by every arming and cancel; a heap entry fires only with the current one.
    @exclusivity(unchecked) private var generation: UInt64 = 0
    /// Nanoseconds between firings; 0 for a one-shot timer.
    @exclusivity(unchecked) private var interval: UInt64 = 0
    @exclusivity(unchecked) private var deadline: UInt64 = 0
    /// True while a firing is due (armed and not cancelled). Loop thread only.
    @exclusivity(unchecked) public private(set) var isScheduled = false

    /// A timer that calls `body` on `loop`'s thread each time it fires. Not armed yet.
    public init(loop: EventLoop, _ body: @escaping () -> Void) {
        self.loop = loop
        self.body = body
    }

    /// Fires once, `delay` after the current loop iteration began (``EventLoop/now``), replacing
    /// whatever was armed before. Loop thread only.
    public func schedule(after delay: Duration) {
        arm(deadline: loop.now &+ delay.nanoseconds, interval: 0)
    }

    /// Fires every `interval` (more than zero), the first time one interval from now, replacing
    /// whatever was armed before. Firings keep to the original grid; a loop that fell more than
    /// one interval behind skips the missed firings instead of running them back to back.
    /// Loop thread only.
    public func schedule(every interval: Duration) {
        let nanoseconds = interval.nanoseconds
        precondition(nanoseconds > 0, "LoopTimer.schedule(every:) needs an interval above zero")
        arm(deadline: loop.now &+ nanoseconds, interval: nanoseconds)
    }

    /// Stops further firings; `body` is not called again until the timer is armed anew. Calling
    /// it from `body` stops a repeating timer. Loop thread only.
    public func cancel() {
        precondition(loop.inEventLoop, "LoopTimer is for its loop's thread")
        generation &+= 1
        isScheduled = false
    }

    private func arm(deadline: UInt64, interval: UInt64) {
        precondition(loop.inEventLoop, "LoopTimer is for its loop's thread")
        generation &+= 1
        self.deadline = deadline
        self.interval = interval
        isScheduled = true
        loop.schedule(at: deadline, target: self, tag: generation)
    }

    func timerFired(tag: UInt64) {
        guard isScheduled, tag == generation else { return }
        if interval > 0 {
            let next = deadline &+ interval
            deadline = next > loop.now ? next : loop.now &+ interval
            loop.schedule(at: deadline, target: self, tag: generation)
        } else {
            isScheduled = false
        }
        body()
    }
}
