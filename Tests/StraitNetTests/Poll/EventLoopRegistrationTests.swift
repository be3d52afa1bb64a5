import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

/// A handler whose behaviour each test supplies; calls arrive on the loop's thread only.
final class ClosureHandler: DescriptorHandler, @unchecked Sendable {
    let ready: (DescriptorRegistration, IOEvents) -> Void

    init(_ ready: @escaping (DescriptorRegistration, IOEvents) -> Void) { self.ready = ready }

    func descriptorReady(_ registration: DescriptorRegistration, events: IOEvents) { ready(registration, events) }
}

/// A small non-blocking pipe: (read end, write end).
func makePipe() throws -> (CInt, CInt) {
    try RelayCall.pipe(size: 4096).take()
}

/// Loop-confined values a test reads back once the loop has answered.
final class LoopBox<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

extension Loopback {
@Suite("Descriptors and timers on a loop")
struct EventLoopRegistrationTests {
    /// Runs `body` on `loop` and waits for it, so a test sees the loop's state after the pass.
    func onLoop<Value: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () throws -> Value) async throws -> Value {
        let answer = Signal<Result<Value, Error>>()
        loop.execute { answer.send(Result { try body() }) }
        let values = await answer.wait()
        try #require(values.count == 1, "the loop answered")
        return try values[0].get()
    }

    @Test("register, change interest, deregister: events follow the interest set")
    func interestSet() async throws {
        try await withGroup(loops: 1) { group in
            let loop = group.loops[0]
            let (readEnd, writeEnd) = try makePipe()
            defer { closeDescriptor(readEnd); closeDescriptor(writeEnd) }
            let seen = Signal<String>()
            let handler = ClosureHandler { registration, events in
                if events.contains(.writable) { seen.send("writable") }
                if events.contains(.readable) { seen.send("readable") }
                // Level-triggered: stop asking, or it would report the same state every pass.
                try? registration.setInterest([])
            }
            let writer = try loop.register(descriptor: writeEnd, interest: .writable, handler: handler)
            #expect(await seen.wait() == ["writable"])
            let reader = try loop.register(descriptor: readEnd, interest: .readable, handler: handler)
            var byte: UInt8 = 7
            #expect(write(writeEnd, &byte, 1) == 1)
            #expect(await seen.wait(count: 2) == ["writable", "readable"])
            try await onLoop(loop) {
                #expect(reader.interest == [] && writer.interest == [])
                try reader.setInterest(.readable)  // still readable: reported again
            }
            #expect(await seen.wait(count: 3) == ["writable", "readable", "readable"])
            try await onLoop(loop) {
                reader.deregister()
                writer.deregister()
                #expect(!reader.isRegistered && !writer.isRegistered)
            }
            #expect(seen.values.count == 3, "nothing after deregistering")
        }
    }

    @Test("a descriptor number closed and reused within one pass never gets the old registration's event")
    func staleEventDropped() async throws {
        try await withGroup(loops: 1) { group in
            let loop = group.loops[0]
            let calls = Signal<String>()
            let (idleRead, idleWrite) = try makePipe()
            defer { closeDescriptor(idleRead); closeDescriptor(idleWrite) }
            let reused = LoopBox<(number: CInt, registration: DescriptorRegistration?)>((-1, nil))
            try await onLoop(loop) {
                // Two readable pipes registered in one task: the next epoll_wait returns both in
                // one batch. Whichever handler runs first closes the other's descriptor, puts an
                // idle pipe on the same number and registers that; the second event of the batch
                // was fetched for the closed descriptor and must be dropped.
                let first = try makePipe(), second = try makePipe()
                var byte: UInt8 = 1
                _ = write(first.1, &byte, 1)
                _ = write(second.1, &byte, 1)
                let registrations = LoopBox<[DescriptorRegistration]>([])
                let handler = ClosureHandler { registration, _ in
                    let name = registration === registrations.value[0] ? "first" : "second"
                    calls.send(name)
                    let other = registrations.value[name == "first" ? 1 : 0]
                    other.deregister()
                    closeDescriptor(other.fd)
                    #expect(dup2(idleRead, other.fd) == other.fd)
                    reused.value.number = other.fd
                    reused.value.registration = try? loop.register(
                        descriptor: other.fd, interest: .readable,
                        handler: ClosureHandler { _, _ in calls.send("reused") })
                    registration.deregister()
                    closeDescriptor(registration.fd)
                }
                registrations.value = [
                    try loop.register(descriptor: first.0, interest: .readable, handler: handler),
                    try loop.register(descriptor: second.0, interest: .readable, handler: handler),
                ]
                closeDescriptor(first.1)
                closeDescriptor(second.1)
            }
            #expect(await calls.wait().count == 1)
            // Let a few more passes run: the reused number stays idle, so nothing may arrive.
            for _ in 0..<3 { _ = try await onLoop(loop) { 0 } }
            #expect(calls.values.count == 1, "only the first handler ran: \(calls.values)")
            try await onLoop(loop) {
                #expect(reused.value.registration != nil)
                reused.value.registration?.deregister()
                closeDescriptor(reused.value.number)
            }
        }
    }

    @Test("timers fire in deadline order, equal deadlines in arming order; cancel and re-arm")
    func timerOrder() async throws {
        try await withGroup(loops: 1) { group in
            let loop = group.loops[0]
            let fired = Signal<String>()
            let timers = LoopBox<[LoopTimer]>([])
            try await onLoop(loop) {
                func timer(_ name: String) -> LoopTimer {
                    let timer = LoopTimer(loop: loop) { fired.send(name) }
                    timers.value.append(timer)
                    return timer
                }
                timer("30").schedule(after: .milliseconds(30))
                timer("10").schedule(after: .milliseconds(10))
                timer("20").schedule(after: .milliseconds(20))
                timer("tie-a").schedule(after: .milliseconds(15))
                timer("tie-b").schedule(after: .milliseconds(15))
                let cancelled = timer("cancelled")
                cancelled.schedule(after: .milliseconds(5))
                cancelled.cancel()
                #expect(!cancelled.isScheduled)
                let moved = timer("moved")
                moved.schedule(after: .milliseconds(1))
                moved.schedule(after: .milliseconds(25))
                timer("end").schedule(after: .milliseconds(40))
            }
            let order = await fired.wait(count: 7)
            #expect(order == ["10", "tie-a", "tie-b", "20", "moved", "30", "end"])
            try await onLoop(loop) { #expect(timers.value.allSatisfy { !$0.isScheduled }) }
        }
    }

    @Test("a repeating timer fires until cancelled from its own body, then never again")
    func repeatingTimer() async throws {
        try await withGroup(loops: 1) { group in
            let loop = group.loops[0]
            let fired = Signal<String>()
            let box = LoopBox<(ticker: LoopTimer?, sentinel: LoopTimer?, count: Int)>((nil, nil, 0))
            try await onLoop(loop) {
                box.value.sentinel = LoopTimer(loop: loop) { fired.send("sentinel after \(box.value.count)") }
                box.value.ticker = LoopTimer(loop: loop) {
                    box.value.count += 1
                    fired.send("tick \(box.value.count)")
                    if box.value.count == 5 {
                        box.value.ticker?.cancel()
                        // Several intervals later: any firing after the cancel would come first.
                        box.value.sentinel?.schedule(after: .milliseconds(10))
                    }
                }
                box.value.ticker?.schedule(every: .milliseconds(1))
            }
            let values = await fired.wait(count: 6)
            #expect(values == (1...5).map { "tick \($0)" } + ["sentinel after 5"])
            try await onLoop(loop) { box.value = (nil, nil, 0) }
        }
    }

    /// A listener hand-over that confirms after the server's group shut down stops the server's
    /// acceptors with tasks on loops that no longer run: those tasks used to wait forever (a test
    /// process hung in `stopAcceptingNow`); now they run on the caller's thread.
    @Test("a task queued on a stopped loop runs at once on the caller's thread; stopAccepting returns")
    func stoppedLoopRunsTasksInline() async throws {
        let group = try EventLoopGroup(loopCount: 2)
        let server = try Server(address: .loopback(port: 0), group: group, handlers: ConnectionHandlers(onRequest: { _ in }))
        group.shutdown()
        let ran = Mutex<pthread_t?>(nil)
        group.loops[0].execute { ran.withLock { $0 = pthread_self() } }
        #expect(ran.withLock { $0 } == pthread_self(), "the task ran, on this thread")
        let returned = Signal<Bool>()
        Task.detached {
            server.stopAccepting()
            returned.send(true)
        }
        #expect(await returned.wait() == [true], "stopAccepting returned on a stopped group")
    }
}
}
