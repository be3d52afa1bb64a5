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
    /// the default slice (about 3 ms) waits for the running thread's slice to end, and every
    /// connection it serves waits with it: that wait was most of StraitNet's p99 at 256 wrk
    /// connections. With a shorter slice than the running thread's, the kernel (EEVDF, Linux 6.12
    /// and later) lets the woken loop preempt it. It changes when a loop runs, not how much CPU it
    /// gets: the scheduler's fairness is unchanged.
    public static let defaultSchedulerSlice: Duration = .microseconds(100)

    /// Starts `loopCount` loops (default: one per online core). Ignores `SIGPIPE` process-wide so
    /// writes to a vanished peer return `EPIPE`.
    ///
    /// `schedulerSlice` is asked for on every loop thread with `sched_setattr(2)`
    /// (``defaultSchedulerSlice``; nil keeps the kernel's default). Kernels without custom slices,
    /// and threads with a real-time policy, keep theirs; nothing fails.
    public init(loopCount: Int = EventLoopGroup.coreCount, schedulerSlice: Duration? = EventLoopGroup.defaultSchedulerSlice) throws(SystemCallError) {
        precondition(loopCount > 0, "an EventLoopGroup needs at least one loop")
        SocketCall.ignoreBrokenPipe()
        var loops: [EventLoop] = []
        for index in 0..<loopCount {
            loops.append(try EventLoop(index: index))
        }
        self.loops = loops
        var threads: [pthread_t] = []
        for loop in loops {
            let slice = schedulerSlice?.nanoseconds
            threads.append(Self.startThread(name: "straitnet-\(loop.index)") {
                if let slice { _ = strait_set_thread_slice(CUnsignedLongLong(slice)) }
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
