import Foundation
import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

extension Loopback {
@Suite("Connections on loopback")
struct ConnectionTests {
    enum Mode: String, CaseIterable, Sendable { case onLoop, workerPool }

    @Test("echo over TCP, handlers on the loop or in the worker pool", arguments: Mode.allCases)
    func echo(mode: Mode) async throws {
        let pool = WorkerPool(threadCount: 2)
        defer { pool.shutdown() }
        try await withGroup { group in
            var configuration = ServerConfiguration()
            if mode == .workerPool { configuration.connection.execution = .workerPool(pool) }
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: echoHandlers())
            let client = try PlainClient(server.address)
            for round in 0..<50 {
                try client.send("message \(round)")
                #expect(try client.receiveString("message \(round)".utf8.count) == "message \(round)")
            }
            await server.shutdown(gracePeriod: .seconds(1))
            #expect(server.connectionCount == 0)
        }
    }

    @Test("echo over a Unix socket")
    func unixEcho() async throws {
        let path = "/tmp/straitnet-test-\(getpid()).sock"
        try await withGroup { group in
            let server = try Server(listeners: [Listener.unix(path: path)], group: group, handlers: echoHandlers())
            let client = try PlainClient(.unix(path: path))
            try client.send("over unix")
            #expect(try client.receiveString(9) == "over unix")
            await server.shutdown(gracePeriod: .seconds(1))
            #expect(!FileManager.default.fileExists(atPath: path), "the server removes its socket path")
        }
    }

    @Test("SO_REUSEPORT: one listener per loop, all serving the same port")
    func reusePort() async throws {
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.reusePort = true
            let loops = Signal<Int>()
            var handlers = echoHandlers()
            handlers.onConnect = { loops.send($0.loop.index) }
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let clients = try (0..<32).map { _ in try PlainClient(server.address) }
            for client in clients {
                try client.send("x")
                #expect(try client.receiveString(1) == "x")
            }
            #expect(await loops.wait(count: 32).count == 32)
            #expect(Set(loops.values).count == 2, "the kernel spread 32 connections over both loops' listeners")
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("a message arriving in pieces is handled once it is whole")
    func partialReads() async throws {
        try await withGroup { group in
            // Frames: 2-byte big-endian length, then the bytes; the reply is the bytes reversed.
            let handlers = ConnectionHandlers(onRequest: { connection in
                let reader = connection.reader
                while reader.readableBytes >= 2 {
                    let length = Int(try reader.peek(2).loadUnaligned(as: UInt16.self).bigEndian)
                    guard reader.readableBytes >= 2 + length else { return }
                    try reader.skip(2)
                    connection.writer.write(Array(try reader.next(length)).reversed())
                    connection.flush()
                }
            })
            let server = try Server(address: .loopback(), group: group, handlers: handlers)
            let client = try PlainClient(server.address)
            let payload = Array("abcdefghij".utf8)
            try client.send([0])
            try await Task.sleep(for: .milliseconds(30))
            try client.send([10] + payload[0..<3])
            try await Task.sleep(for: .milliseconds(30))
            try client.send(Array(payload[3...]) + [0, 2] + Array("yz".utf8))
            #expect(try client.receiveString(12) == "jihgfedcbazy")
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("a large response to a stalled reader is written in pieces and arrives whole")
    func partialWrites() async throws {
        try await withGroup { group in
            let size = 8 << 20
            let handlers = ConnectionHandlers(onRequest: { connection in
                try connection.reader.skip(connection.reader.readableBytes)
                let room = connection.writer.malloc(size)
                for index in 0..<size { room[index] = UInt8(truncatingIfNeeded: index &* 7) }
                connection.flush()
            })
            let server = try Server(address: .loopback(), group: group, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send("go")
            try await Task.sleep(for: .milliseconds(200))  // stall: the socket buffers fill up
            let received = try client.receive(size)
            #expect(received.count == size)
            #expect(received.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset &* 7) })
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("a half-closing peer gets its response, then the server closes")
    func halfClose() async throws {
        try await withGroup { group in
            let reasons = Signal<CloseReason>()
            let server = try Server(address: .loopback(), group: group, handlers: echoHandlers(disconnects: reasons))
            let client = try PlainClient(server.address)
            try client.send("last words")
            client.shutdownWrite()
            #expect(try client.receiveString(10) == "last words")
            #expect(client.readsEndOfStream())
            #expect(await reasons.wait() == [.peerClosed])
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("a resetting peer is noticed with the reset reason")
    func peerReset() async throws {
        try await withGroup { group in
            let reasons = Signal<CloseReason>()
            let received = Signal<Int>()
            let handlers = ConnectionHandlers(
                onRequest: { connection in received.send(try connection.reader.readBinary(connection.reader.readableBytes).count) },
                onDisconnect: { _, reason in reasons.send(reason) })
            let server = try Server(address: .loopback(), group: group, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send("before reset")
            #expect(await received.wait() == [12])
            client.reset()
            #expect(await reasons.wait() == [.reset])
            #expect(server.connectionCount == 0)
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("read-idle timeout closes a silent connection")
    func idleTimeout() async throws {
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.connection.readIdleTimeout = .milliseconds(100)
            let reasons = Signal<CloseReason>()
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: echoHandlers(disconnects: reasons))
            let started = ContinuousClock.now
            let client = try PlainClient(server.address)
            try client.send("one")  // activity pushes the deadline
            #expect(try client.receiveString(3) == "one")
            #expect(client.readsEndOfStream())
            #expect(await reasons.wait() == [.idleTimeout])
            #expect(reasons.values.first?.isTimeout == true)
            #expect(ContinuousClock.now - started >= .milliseconds(100))
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("write timeout closes a connection whose peer stopped reading")
    func writeTimeout() async throws {
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.connection.writeTimeout = .milliseconds(150)
            let reasons = Signal<CloseReason>()
            let handlers = ConnectionHandlers(
                onRequest: { connection in
                    try connection.reader.skip(connection.reader.readableBytes)
                    _ = connection.writer.malloc(32 << 20)
                    connection.flush()
                },
                onDisconnect: { _, reason in reasons.send(reason) })
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send("flood me")
            #expect(await reasons.wait() == [.writeTimeout])
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("input limit: reading stops at the limit, and a handler that takes nothing there is closed and counted")
    func inputLimitBackpressure() async throws {
        try await withGroup { group in
            var configuration = ServerConfiguration()
            configuration.connection.inputLimit = 64 << 10
            let largest = Mutex(0)
            let handlers = ConnectionHandlers(onRequest: { connection in
                largest.withLock { $0 = max($0, connection.reader.readableBytes) }  // never consumes
            })
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            // Non-blocking sends until the kernel refuses: the server has stopped reading.
            let flags = fcntl(client.fd, F_GETFL)
            _ = fcntl(client.fd, F_SETFL, flags | O_NONBLOCK)
            let chunk = [UInt8](repeating: 1, count: 64 << 10)
            var sent = 0
            while sent < 256 << 20 {
                let count = chunk.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
                if count < 0 { break }
                sent += count
            }
            #expect(sent < 256 << 20, "the sender was pushed back")
            try await Task.sleep(for: .milliseconds(50))
            let peak = largest.withLock { $0 }
            #expect(peak >= 64 << 10 && peak < (64 << 10) + configuration.connection.readChunk + 4096)
            // Nothing more can be read, so waiting would wedge: the connection is closed instead.
            #expect(client.readsEndOfStream())
            #expect(server.connectionCount == 0)
            #expect(server.refusedConnections == 1)
            await server.shutdown(gracePeriod: .milliseconds(100))
        }
    }

    @Test("dialer: connect, exchange, refused, and timeout")
    func dialer() async throws {
        try await withGroup { group in
            let server = try Server(address: .loopback(), group: group, handlers: echoHandlers())
            let dialer = Dialer(group: group)
            let replies = Signal<String>()
            let connection = try await dialer.connect(
                to: server.address, timeout: .seconds(1),
                handlers: ConnectionHandlers(onRequest: { connection in
                    let reader = connection.reader
                    if reader.readableBytes >= 5 { replies.send(try reader.readString(5)) }
                }))
            let request = LinkBuffer()
            request.write(string: "dial!")
            connection.send(request)
            #expect(await replies.wait() == ["dial!"])
            connection.close()

            // Nobody listens on a port the server just freed.
            let unused = try Listener.tcp(.loopback())
            let freed = unused.address
            unused.close()
            await #expect(throws: NetError.self) {
                _ = try await dialer.connect(to: freed, timeout: .seconds(1), handlers: echoHandlers())
            }
            do {
                _ = try await dialer.connect(to: freed, timeout: .seconds(1), handlers: echoHandlers())
            } catch let error as NetError {
                guard case .closed(.connectFailed(let failure)) = error else { throw error }
                #expect(failure.function == "connect" && failure.errno == .connectionRefused, "\(failure)")
            }

            // A listener that never accepts, its queue full: SYNs go unanswered, the dial times out.
            let full = try Listener.tcp(.loopback(), backlog: 0)
            let fillers = try (0..<4).compactMap { _ -> CInt? in
                let fd = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue))
                _ = try? SocketCall.connect(fd, to: full.address)
                return fd
            }
            try await Task.sleep(for: .milliseconds(50))
            let started = ContinuousClock.now
            do {
                _ = try await dialer.connect(to: full.address, timeout: .milliseconds(200), handlers: echoHandlers())
                Issue.record("connected to a listener whose queue is full")
            } catch let error as NetError {
                #expect(error == .closed(.connectTimeout))
                #expect(ContinuousClock.now - started >= .milliseconds(200))
            }
            for fd in fillers { closeDescriptor(fd) }
            full.close()
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }
}
}
