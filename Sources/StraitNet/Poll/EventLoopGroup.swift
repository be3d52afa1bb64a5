import Atomics
import CStraitSystem
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A set of ``EventLoop``s, each on its own thread: one per core unless told otherwise.
///
/// The group owns its threads and epoll descriptors; ``shutdown()`` closes every connection still
/// on a loop, stops the threads and closes the descriptors. Not calling it leaks the threads.
public final class EventLoopGroup: Sendable {
    /// The loops, by index; each runs on its own thread until ``shutdown()``.
    public let loops: [EventLoop]
    private let threads: Mutex<[pthread_t]>
    private let cursor = ManagedAtomic<Int>(0)

    /// The scheduler slice loop threads ask for by default: 0.1 ms, the kernel's minimum.
    ///
    /// A loop sleeps in `epoll_wait` between short bursts of work. On a machine with more busy
    /// threads than cores (two loops and a load generator on two cores, say), a woken loop with
    /// the default slice (about 3 ms) may wait for the running thread's slice to end, and every
    /// connection it serves waits with it. With a shorter slice than the running thread's, the
    /// kernel (EEVDF, Linux 6.12 and later) lets the woken loop preempt it. It changes when a loop
    /// runs, not how much CPU it gets: the scheduler's fairness is unchanged. Measured later at 256
    /// wrk connections on a shared machine, slices from 0.1 to 3 ms moved p99 less than the noise
    /// between runs; where the loops run mattered more (``Placement/onePerCPU``).
    public static let defaultSchedulerSlice: Duration = .microseconds(100)

    /// Which CPUs the loop threads run on.
    public enum Placement: Sendable, Equatable {
        /// Wherever the kernel's scheduler puts them (the default).
        case anywhere
        /// Loop `i` pinned to online CPU `i` modulo the core count, with `sched_setaffinity(2)`.
        ///
        /// What it buys: a loop woken by a thread on another CPU stays on its own CPU. When a
        /// thread's own CPU is busy, the kernel runs it on the CPU of the thread whose socket
        /// write woke it. With two loops and a busy load generator on two cores, that left a loop
        /// waiting behind the generator for milliseconds at a time. Pinning took StraitNet's p99
        /// at 256 wrk connections from 7.8-9.2 ms to 5.1-6.3 ms (README, "The tail at 256
        /// connections"). What it costs: a loop can no longer move to an idle CPU (about 10% fewer
        /// requests/s in those runs), and two pinned processes on one machine share the same first
        /// CPUs. So it is for a machine given to this process, like HAProxy's `cpu-map` or nginx's
        /// `worker_cpu_affinity`. A CPU the process may not use (outside its cpuset) leaves that
        /// loop unpinned; nothing fails.
        case onePerCPU
    }

    /// Starts `loopCount` loops (default: one per online core). Ignores `SIGPIPE` process-wide so
    /// writes to a vanished peer return `EPIPE`.
    ///
    /// `schedulerSlice` is asked for on every loop thread with `sched_setattr(2)`
    /// (``defaultSchedulerSlice``; nil keeps the kernel's default). Kernels without custom slices,
    /// and threads with a real-time policy, keep theirs; nothing fails. `placement` says which
    /// CPUs the loop threads may run on (``Placement/anywhere`` by default).
    public init(
        loopCount: Int = EventLoopGroup.coreCount, schedulerSlice: Duration? = EventLoopGroup.defaultSchedulerSlice,
        placement: Placement = .anywhere
    ) throws(SystemCallError) {
        precondition(loopCount > 0, "an EventLoopGroup needs at least one loop")
        SocketCall.ignoreBrokenPipe()
        var loops: [EventLoop] = []
        for index in 0..<loopCount {
            loops.append(try EventLoop(index: index))
        }
        self.loops = loops
        var threads: [pthread_t] = []
        let cores = Self.coreCount
        for loop in loops {
            let slice = schedulerSlice?.nanoseconds
            let cpu = placement == .onePerCPU ? loop.index % cores : nil
            threads.append(Self.startThread(name: "straitnet-\(loop.index)") {
                if let slice { _ = strait_set_thread_slice(CUnsignedLongLong(slice)) }
                if let cpu { try? SocketCall.pinCurrentThread(toCPU: cpu) }
                loop.run()
            })
        }
        self.threads = Mutex(threads)
    }

    /// Online cores, from `sysconf(_SC_NPROCESSORS_ONLN)`.
    public static var coreCount: Int { max(1, sysconf(CInt(_SC_NPROCESSORS_ONLN))) }

    /// The next loop, round robin: where new connections go.
    public func next() -> EventLoop {
        loops[cursor.loadThenWrappingIncrement(ordering: .relaxed) % loops.count]
    }

    /// Stops every loop (closing their connections with ``CloseReason/shutdown``), waits for the
    /// threads to end and closes the loops' descriptors. Servers should be shut down first for a
    /// graceful close; this one is immediate. Calling it twice is harmless.
    public func shutdown() {
        let threads = self.threads.withLock { threads in
            defer { threads = [] }
            return threads
        }
        guard !threads.isEmpty else { return }
        for loop in loops { loop.stop() }
        for thread in threads { pthread_join(thread, nil) }
        for loop in loops { loop.closeDescriptors() }
    }

    /// Starts a joinable pthread running `body`.
    static func startThread(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
        final class Box {
            let body: @Sendable () -> Void
            let name: String
            init(_ body: @escaping @Sendable () -> Void, name: String) {
                self.body = body
                self.name = name
            }
        }
        let context = Unmanaged.passRetained(Box(body, name: name)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
            strait_set_thread_name(String(box.name.prefix(15)))
            box.body()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        return thread
    }
}
