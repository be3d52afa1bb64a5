import DequeModule

#if canImport(Glibc)
import Glibc
#endif

/// A fixed set of threads for handlers that may block (disk, a lock, a slow computation), so that
/// no event loop ever waits on them.
///
/// Bounded: at most `threadCount` handlers run at once. A connection has at most one job queued or
/// running (its next burst of input waits in its reader, under the input limit), so the queue never
/// holds more entries than there are connections. Jobs are connections, not closures: queueing one
/// allocates nothing once the queue has grown. The pool's threads end at ``shutdown()``.
public final class WorkerPool: @unchecked Sendable {
    /// How many threads run jobs; fixed at start.
    public let threadCount: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue = Deque<Connection>()
    private var stopping = false
    private var threads: [pthread_t] = []

    /// Starts `threadCount` threads (each blocked on the pool's condition variable while idle, no CPU);
    /// the pool owns them until ``shutdown()``.
    public init(threadCount: Int) {
        precondition(threadCount > 0, "a worker pool needs at least one thread")
        self.threadCount = threadCount
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        queue.reserveCapacity(256)
        for index in 0..<threadCount {
            threads.append(EventLoopGroup.startThread(name: "straitnet-w\(index)") { [self] in work() })
        }
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func submit(_ connection: Connection) {
        pthread_mutex_lock(mutex)
        queue.append(connection)
        pthread_mutex_unlock(mutex)
        pthread_cond_signal(condition)
    }

    private func work() {
        while true {
            pthread_mutex_lock(mutex)
            while queue.isEmpty && !stopping { pthread_cond_wait(condition, mutex) }
            guard let connection = queue.popFirst() else {
                pthread_mutex_unlock(mutex)
                return
            }
            pthread_mutex_unlock(mutex)
            connection.runOnWorker()
        }
    }

    /// Lets queued jobs finish, then ends the threads. Shut servers using the pool down first.
    public func shutdown() {
        pthread_mutex_lock(mutex)
        stopping = true
        let threads = self.threads
        self.threads = []
        pthread_mutex_unlock(mutex)
        pthread_cond_broadcast(condition)
        for thread in threads { pthread_join(thread, nil) }
    }
}
