import Foundation
import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

extension Loopback {
@Suite("Server lifecycle")
struct ServerTests {
    /// Raises the descriptor limit as far as the hard limit allows (root may raise that too).
    static func raiseDescriptorLimit(to wanted: rlim_t) -> Int {
        var limit = rlimit()
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < wanted {
            var raised = rlimit(rlim_cur: wanted, rlim_max: max(wanted, limit.rlim_max))
            if setrlimit(CInt(RLIMIT_NOFILE.rawValue), &raised) != 0 {
                raised = rlimit(rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max)
                setrlimit(CInt(RLIMIT_NOFILE.rawValue), &raised)
            }
        }
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        return Int(limit.rlim_cur)
    }

    @Test("10,000 concurrent connections, each served, and no descriptor left open afterwards")
    func manyConnections() async throws {
        // Both ends live in this process: two descriptors per connection.
        let limit = Self.raiseDescriptorLimit(to: 24_000)
        let baseline = openDescriptorCount()
        let before = descriptorSnapshot()
        let count = min(10_000, (limit - baseline - 200) / 2)
        #expect(count >= 4_000, "descriptor limit \(limit) leaves room for only \(count) connections")
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.backlog = 4096
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: echoHandlers())
            let afterStart = descriptorSnapshot()
            let dialer = Dialer(group: group)
            let replies = Signal<Int>()
            let clientHandlers = ConnectionHandlers(onRequest: { connection in
                if connection.reader.readableBytes >= 4 {
                    replies.send(Int(try connection.reader.readInteger(as: UInt32.self)))
                }
            })
            var connections: [Connection] = []
            connections.reserveCapacity(count)
            for start in stride(from: 0, to: count, by: 500) {
                try await withThrowingTaskGroup(of: Connection.self) { tasks in
                    for _ in start..<min(start + 500, count) {
                        tasks.addTask { try await dialer.connect(to: server.address, timeout: .seconds(10), handlers: clientHandlers) }
                    }
                    for try await connection in tasks { connections.append(connection) }
                }
            }
            #expect(connections.count == count)
            for (index, connection) in connections.enumerated() {
                let request = LinkBuffer()
                request.writeInteger(UInt32(index))
                connection.send(request)
            }
            let received = await replies.wait(count: count, timeout: .seconds(30))
            #expect(received.count == count)
            #expect(Set(received) == Set(0..<count), "every connection got its own reply")
            #expect(server.connectionCount == count)
            for connection in connections { connection.close() }
            let deadline = ContinuousClock.now + .seconds(10)
            while server.connectionCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.connectionCount == 0)
            connections.removeAll()
            try await Task.sleep(for: .milliseconds(50))
            let leakedByConnections = descriptorsOpened(since: afterStart)
            #expect(leakedByConnections.isEmpty, "every client and server socket was closed: \(leakedByConnections)")
            await server.shutdown(gracePeriod: .seconds(1))
        }
        let leakedByGroup = descriptorsOpened(since: before)
        #expect(leakedByGroup.isEmpty, "loops, listener and eventfds closed with the group: \(leakedByGroup)")
    }

    @Test("shutdown lets a running handler finish and send within the grace period")
    func shutdownWaitsForInFlight() async throws {
        let pool = WorkerPool(threadCount: 2)
        defer { pool.shutdown() }
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.connection.execution = .workerPool(pool)
            let started = Signal<Bool>()
            let reasons = Signal<CloseReason>()
            let handlers = ConnectionHandlers(
                onRequest: { connection in
                    started.send(true)
                    let request = try connection.reader.readString(connection.reader.readableBytes)
                    usleep(300_000)  // a slow, blocking handler
                    connection.writer.write(string: "done: \(request)")
                    connection.flush()
                },
                onDisconnect: { _, reason in reasons.send(reason) })
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let busy = try PlainClient(server.address)
            let idle = try PlainClient(server.address)
            try busy.send("work")
            #expect(await started.wait() == [true])
            let begun = ContinuousClock.now
            await server.shutdown(gracePeriod: .seconds(3))
            #expect(ContinuousClock.now - begun < .seconds(2), "shutdown ended once the handler finished")
            #expect(try busy.receiveString(10) == "done: work")
            #expect(busy.readsEndOfStream())
            #expect(idle.readsEndOfStream())
            #expect(await reasons.wait(count: 2) == [.shutdown, .shutdown])
            #expect(server.connectionCount == 0)
            #expect((try? PlainClient(server.address)) == nil, "the listener is closed")
        }
    }

    @Test("shutdown closes a handler's connection that outlives the grace period")
    func shutdownDeadline() async throws {
        let pool = WorkerPool(threadCount: 1)
        defer { pool.shutdown() }
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.connection.execution = .workerPool(pool)
            let started = Signal<Bool>()
            let handlers = ConnectionHandlers(onRequest: { connection in
                started.send(true)
                try connection.reader.skip(connection.reader.readableBytes)
                usleep(800_000)
                connection.writer.write(string: "too late")
                connection.flush()
            })
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send("slow")
            #expect(await started.wait() == [true])
            let begun = ContinuousClock.now
            await server.shutdown(gracePeriod: .milliseconds(100))
            #expect(ContinuousClock.now - begun < .milliseconds(700))
            #expect(server.connectionCount == 0)
            #expect(try client.receive(8).isEmpty, "closed before the late response")
            try await Task.sleep(for: .milliseconds(900))  // the handler ends; its output is dropped
        }
    }
}
}
