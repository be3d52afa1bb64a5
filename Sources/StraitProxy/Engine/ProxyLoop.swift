import CStraitSystem
import Foundation
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Something a ``ProxyLoop`` polls: a listener or one side of a relay. Loop thread only.
protocol PollHandler: AnyObject {
    func handle(fd: CInt, events: UInt32)
}

/// Something a loop calls on every tick (about every 100 ms, every millisecond while
/// ``ProxyLoop/wantsFastTicks`` is raised): deadlines, sockmap drain checks.
protocol TickHandler: AnyObject {
    func tick(now: UInt64)
}

/// A level-triggered epoll reactor on its own thread, owning the relays it accepted.
///
/// StraitNet's `Connection` closes a socket once its input ends, which would cut a half-closed TCP
/// stream in two; a relay must keep writing after one side's FIN, so the proxy drives its sockets
/// here, with StraitNet's `LinkBuffer` as the copy buffer. Level-triggered polling keeps the
/// interest set honest: a side is polled for input only while its direction has room, and for
/// output only while bytes wait.
final class ProxyLoop: @unchecked Sendable {
    let index: Int
    private let epoll: CInt
    private let wake: CInt
    private var handlers: [CInt: PollHandler] = [:]
    private var interests: [CInt: UInt32] = [:]
    private let taskLock = NSLock()
    private var queuedTasks: [() -> Void] = []
    private var tickers: [ObjectIdentifier: TickHandler] = [:]
    private let stopRequested = Mutex(false)
    private var thread: pthread_t?
    /// Raised while some relay waits on the kernel (a sockmap half-close): tick every millisecond.
    var fastTickRequests = 0
    private(set) var now: UInt64 = SocketCall.monotonicNanoseconds()

    static let input = UInt32(EPOLLIN.rawValue)
    static let output = UInt32(EPOLLOUT.rawValue)
    static let peerHangUp = UInt32(EPOLLRDHUP.rawValue)
    static let hangUp = UInt32(EPOLLHUP.rawValue)
    static let error = UInt32(EPOLLERR.rawValue)

    init(index: Int) throws(SystemCallError) {
        self.index = index
        epoll = try systemCall("epoll_create1") { epoll_create1(CInt(EPOLL_CLOEXEC)) }
        do {
            wake = try systemCall("eventfd") { eventfd(0, CInt(EFD_NONBLOCK) | CInt(EFD_CLOEXEC)) }
        } catch {
            closeDescriptor(epoll)
            throw error
        }
        var event = epoll_event()
        event.events = Self.input
        event.data.fd = wake
        _ = epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event)
    }

    /// Starts the loop's thread.
    func start() {
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var created = pthread_t()
        pthread_create(&created, &attributes, { raw in
            let loop = Unmanaged<ProxyLoop>.fromOpaque(raw!).takeRetainedValue()
            strait_set_thread_name("strait-proxy-\(loop.index)")
            loop.run()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attributes)
        thread = created
    }

    /// Stops the thread and waits for it; handlers still registered are left to their owners.
    func stopAndJoin() {
        stopRequested.withLock { $0 = true }
        signal()
        if let thread { pthread_join(thread, nil) }
        thread = nil
        closeDescriptor(wake)
        closeDescriptor(epoll)
    }

    /// Runs `body` on the loop thread soon. Safe from any thread.
    func execute(_ body: @escaping () -> Void) {
        taskLock.withLock { queuedTasks.append(body) }
        signal()
    }

    private func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }

    // MARK: Registration (loop thread only, except register before start)

    func register(_ fd: CInt, events: UInt32, handler: PollHandler) throws(SystemCallError) {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        try systemCall("epoll_ctl ADD") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
        handlers[fd] = handler
        interests[fd] = events
    }

    /// Changes what `fd` is polled for; no syscall when nothing changed.
    func update(_ fd: CInt, events: UInt32) {
        guard let current = interests[fd], current != events else { return }
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        _ = epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event)
        interests[fd] = events
    }

    /// Stops polling `fd` (before the owner closes it).
    func deregister(_ fd: CInt) {
        guard handlers.removeValue(forKey: fd) != nil else { return }
        interests[fd] = nil
        var event = epoll_event()
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event)
    }

    func addTicker(_ ticker: TickHandler) { tickers[ObjectIdentifier(ticker)] = ticker }

    /// The relays this loop runs (each is a ticker from start to finish).
    func relays() -> [Relay] { tickers.values.compactMap { $0 as? Relay } }
    func removeTicker(_ ticker: TickHandler) { tickers[ObjectIdentifier(ticker)] = nil }

    // MARK: Running

    private func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var lastTick: UInt64 = 0
        while !stopRequested.withLock({ $0 }) {
            let timeout: CInt = fastTickRequests > 0 ? 1 : 100
            let count = epoll_wait(epoll, events, CInt(capacity), timeout)
            now = SocketCall.monotonicNanoseconds()
            if count > 0 {
                for slot in 0..<Int(count) {
                    let fd = events[slot].data.fd
                    if fd == wake {
                        var value: UInt64 = 0
                        _ = Glibc.read(wake, &value, 8)
                        continue
                    }
                    // A handler earlier in this batch may have closed this descriptor.
                    handlers[fd]?.handle(fd: fd, events: events[slot].events)
                }
            }
            let pending = taskLock.withLock { () -> [() -> Void] in
                defer { queuedTasks.removeAll(keepingCapacity: true) }
                return queuedTasks
            }
            for task in pending { task() }
            let interval: UInt64 = fastTickRequests > 0 ? 1_000_000 : 100_000_000
            if now &- lastTick >= interval {
                lastTick = now
                for ticker in Array(tickers.values) { ticker.tick(now: now) }
            }
        }
    }
}
