import Atomics
import CStraitNet
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
    public let loops: [EventLoop]
    private let threads: Mutex<[pthread_t]>
    private let cursor = ManagedAtomic<Int>(0)

    /// Starts `loopCount` loops (default: one per online core). Ignores `SIGPIPE` process-wide so
    /// writes to a vanished peer return `EPIPE`.
    public init(loopCount: Int = EventLoopGroup.coreCount) throws(SystemCallError) {
        precondition(loopCount > 0, "an EventLoopGroup needs at least one loop")
        SocketCall.ignoreBrokenPipe()
        var loops: [EventLoop] = []
        for index in 0..<loopCount {
            loops.append(try EventLoop(index: index))
        }
        self.loops = loops
        var threads: [pthread_t] = []
        for loop in loops {
            threads.append(Self.startThread(name: "straitnet-\(loop.index)") { loop.run() })
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
