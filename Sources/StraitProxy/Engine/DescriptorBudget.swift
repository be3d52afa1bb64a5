import StraitSystem
import Synchronization

/// Wake-ups of acceptors that left their loop until something is given back (a connection slot
/// of one listener, or descriptors of the whole proxy): each is called once, at the next
/// ``wakeAll()``. One atomic load per ``wakeAll()`` when nobody waits.
final class AcceptorWakeList: Sendable {
    private let waiters = Mutex<[@Sendable () -> Void]>([])
    /// The count of ``waiters``, read without the lock on every connection's end.
    private let count = Atomic<Int>(0)

    /// Has `wake` called at the next ``wakeAll()``. True when nobody was waiting already (the
    /// limit has just been reached: the caller counts it). The caller looks at the limit again
    /// after this: a release in between woke nobody.
    func add(_ wake: @escaping @Sendable () -> Void) -> Bool {
        let first = waiters.withLock { waiters in
            waiters.append(wake)
            return waiters.count == 1
        }
        count.add(1, ordering: .sequentiallyConsistent)
        return first
    }

    /// Calls and forgets every waiting wake-up.
    func wakeAll() {
        guard count.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let woken = waiters.withLock { waiters in
            defer { waiters = [] }
            return waiters
        }
        count.subtract(woken.count, ordering: .sequentiallyConsistent)
        for wake in woken { wake() }
    }

    /// Whether some acceptor waits now.
    var isEmpty: Bool { count.load(ordering: .relaxed) == 0 }
}

/// The proxy's descriptor budget: how many descriptors its relays may hold, so that the process
/// never reaches `RLIMIT_NOFILE` in normal operation. Running out is not only an `EMFILE` to back
/// off from: a Swift process whose descriptors run out while libdispatch's worker monitor reads
/// `/proc/PID/stat` traps inside libdispatch (`_dispatch_workq_monitor_pools`), so the limit must
/// be kept away from, not met.
///
/// The capacity is the soft limit, less the descriptors open when the listeners were (re)applied
/// that relays do not hold (listeners, loops, BPF maps, the access log, …), less a **reserve** of
/// `max(64, limit / 100)` (``reserve(forLimit:)``) that relays never take. The reserve covers what
/// opens beside relays afterwards: `/metrics` scrapes and their reads of `/proc`, health-check
/// sockets, DNS lookups, control-socket requests, reloads' new listeners and files, libdispatch's
/// own reads; 64 is several times what those hold at once, and 1% keeps the margin in proportion
/// on a large limit, where a burst of them is likelier.
///
/// Counting is the proxy's own accounting, not a `/proc` walk per accept: an acceptor takes
/// ``descriptors(for:)`` of its listener's datapath before `accept` (one compare-and-swap) and the
/// relay gives them back when it ends. Without room the acceptor leaves its loop, as at
/// `max_connections`, so clients wait in the listen backlog; the next relay to end wakes it.
/// `EMFILE` handling in ``Acceptor`` stays as the last line of defence (another library, or the
/// reserve outrun). ``measure()`` walks `/proc/self/fd` once per start and reload.
///
/// Shared by every loop; lock-free but for the wake list.
final class DescriptorBudget: Sendable {
    /// Descriptors relays may hold together (``measure()``); `Int.max` until measured.
    private let capacity = Atomic<Int>(Int.max)
    /// Descriptors the running relays hold (or are about to: reserved before `accept`).
    let held = Atomic<Int>(0)
    /// The reserve of the last measure, for the status.
    private let reserved = Atomic<Int>(0)
    private let waiters = AcceptorWakeList()
    /// The budget-full line was logged and relays have not yet given back half the capacity: under
    /// sustained pressure each relay's end starts a new episode, one log line covers them all.
    private let loggedFull = Atomic<Bool>(false)

    /// The descriptors never given to relays under a soft `RLIMIT_NOFILE` of `limit`:
    /// `max(64, limit / 100)` (see the type's comment for why).
    static func reserve(forLimit limit: Int) -> Int { max(64, limit / 100) }

    /// The most descriptors one relay on `datapath` holds at once: its client and upstream sockets,
    /// and two pipes on splice (also where `sockmap` falls back to splice). `auto` starts on copy
    /// and moves only to sockmap, which holds no more.
    static func descriptors(for datapath: Datapath) -> Int {
        switch datapath {
        case .splice, .sockmap: 6
        case .copy, .auto, .skmsg: 2
        }
    }

    /// Sets the capacity from the soft `RLIMIT_NOFILE` and the descriptors open now (one listing
    /// of `/proc/self/fd`), at start and at each reload. Relays running keep what they hold: their
    /// descriptors are not counted twice. Wakes acceptors waiting, in case the capacity grew.
    /// Returns the soft limit, the reserve and the capacity (nil when either could not be read:
    /// the last measure stays).
    @discardableResult
    func measure() -> (limit: Int, reserve: Int, capacity: Int)? {
        guard let limits = try? ResourceLimits.openFiles(), let open = ProcessMetrics.openDescriptors() else { return nil }
        let limit = Int(clamping: limits.soft)
        let reserve = Self.reserve(forLimit: limit)
        let others = max(0, open - held.load(ordering: .sequentiallyConsistent))
        reserved.store(reserve, ordering: .relaxed)
        let room = max(0, limit - reserve - others)
        capacity.store(room, ordering: .sequentiallyConsistent)
        waiters.wakeAll()
        return (limit, reserve, room)
    }

    /// Takes `count` descriptors when they fit under the capacity; false otherwise (the caller
    /// waits, ``waitForRoom(_:)``). A compare-and-swap, so loops accepting at once never go over.
    func take(_ count: Int) -> Bool {
        let limit = capacity.load(ordering: .sequentiallyConsistent)
        var current = held.load(ordering: .sequentiallyConsistent)
        while current + count <= limit {
            let (exchanged, original) = held.compareExchange(expected: current, desired: current + count, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives `count` back (a relay ended, or an accept found no client) and wakes the waiting acceptors.
    func giveBack(_ count: Int) {
        let now = held.subtract(count, ordering: .sequentiallyConsistent).newValue
        if loggedFull.load(ordering: .relaxed), now <= capacity.load(ordering: .relaxed) / 2 {
            loggedFull.store(false, ordering: .relaxed)
        }
        waiters.wakeAll()
    }

    /// True once per stretch of pressure (until relays hold half the capacity or less): whether
    /// the caller should log that the budget is full.
    func shouldLogFull() -> Bool { !loggedFull.exchange(true, ordering: .relaxed) }

    /// Has `wake` called at the next ``giveBack(_:)``; true when this starts an episode (counted).
    func waitForRoom(_ wake: @escaping @Sendable () -> Void) -> Bool { waiters.add(wake) }

    /// Whether `count` more would fit now (an acceptor looks again after ``waitForRoom(_:)``).
    func fits(_ count: Int) -> Bool {
        held.load(ordering: .sequentiallyConsistent) + count <= capacity.load(ordering: .sequentiallyConsistent)
    }

    /// What the status shows: capacity (nil before the first measure), held, reserve, and whether
    /// acceptors wait for room now.
    var snapshot: (capacity: Int?, held: Int, reserve: Int, full: Bool) {
        let capacity = capacity.load(ordering: .relaxed)
        return (capacity == Int.max ? nil : capacity, held.load(ordering: .relaxed), reserved.load(ordering: .relaxed), !waiters.isEmpty)
    }
}
