import Foundation
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

extension Loopback {
    @Suite("Multiplexed RPC")
    struct MuxClientTests {
        /// Echo, except: "drop" is never answered, "fail" gets an error frame, and "slow:N" is
        /// answered N milliseconds later from another thread.
        static func server(group: EventLoopGroup) throws -> Server {
            try Server(
                address: .loopback(), group: group,
                handlers: FrameServer.handlers { request in
                    let text = String(decoding: request.payload, as: UTF8.self)
                    if text == "drop" { return }
                    if text == "fail" {
                        var message = "no such method"
                        message.withUTF8 { request.respond(UnsafeRawBufferPointer($0), kind: .error) }
                        return
                    }
                    if text.hasPrefix("slow:"), let delay = Int(text.dropFirst(5)) {
                        let responder = request.deferred
                        let bytes = Array(request.payload)
                        Thread.detachNewThread {
                            usleep(UInt32(delay * 1000))
                            responder.respond(bytes)
                        }
                        return
                    }
                    request.respond(request.payload)
                })
        }

        @Test("frame header round trip and protocol violations")
        func frames() throws {
            let buffer = LinkBuffer()
            Array("payload".utf8).withUnsafeBytes { Frame.write(id: 0xDEAD_BEEF_0001, kind: .response, payload: $0, to: buffer) }
            buffer.flush()
            #expect(buffer.readableBytes == Frame.headerSize + 7)
            #expect(Array(try buffer.peek(4)) == [0, 0, 0, 16])
            let header = try Frame.next(in: buffer)
            #expect(header == Frame.Header(id: 0xDEAD_BEEF_0001, kind: .response, payloadLength: 7))
            #expect(try buffer.readString(7) == "payload")

            buffer.write([0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0])  // header of a frame not fully here
            buffer.flush()
            #expect(try Frame.next(in: buffer) == nil)
            #expect(buffer.readableBytes == 13, "an incomplete frame consumes nothing")
            #expect(throws: NetError.self) { try Frame.next(in: buffer, maximumLength: 10) }
        }

        @Test("many concurrent calls on one connection, answered out of order")
        func concurrentOutOfOrder() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let client = try await MuxClient.connect(to: server.address, dialer: Dialer(group: group))
                let order = Signal<Int>()
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    for index in 0..<200 {
                        tasks.addTask {
                            // Later calls are answered sooner.
                            let text = index < 10 ? "slow:\(200 - index * 20)" : "call \(index)"
                            let reply = try await client.call(Array(text.utf8), timeout: .seconds(5))
                            #expect(String(decoding: reply, as: UTF8.self) == text)
                            if index < 10 { order.send(index) }
                        }
                    }
                    try await tasks.waitForAll()
                }
                #expect(order.values == Array((0..<10).reversed()), "responses matched by id, not by order")
                client.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }

        @Test("per-request timeout, error frames, and the connection carrying on")
        func timeoutsAndErrors() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let client = try await MuxClient.connect(to: server.address, dialer: Dialer(group: group))
                let started = ContinuousClock.now
                await #expect(throws: NetError.timeout) { try await client.call(Array("drop".utf8), timeout: .milliseconds(100)) }
                #expect(ContinuousClock.now - started >= .milliseconds(100))
                await #expect(throws: NetError.protocolViolation("no such method")) { try await client.call(Array("fail".utf8), timeout: .seconds(1)) }
                // A response arriving after its timeout is dropped, and the next call still works.
                await #expect(throws: NetError.timeout) { try await client.call(Array("slow:150".utf8), timeout: .milliseconds(50)) }
                try await Task.sleep(for: .milliseconds(150))
                #expect(try await client.call(Array("after".utf8), timeout: .seconds(1)) == Array("after".utf8))
                #expect(client.isActive)
                client.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }

        @Test("borrowed responses: the payload as a view during the completion, failures alike")
        func borrowedResponses() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let client = try await MuxClient.connect(to: server.address, dialer: Dialer(group: group))
                let results = Signal<String>()
                let large = [UInt8]((0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
                client.call(Array("borrowed".utf8), timeout: .seconds(2), borrowingResponse: { result in
                    results.send((try? result.get()).map { String(decoding: $0, as: UTF8.self) } ?? "failed")
                })
                client.call(large, timeout: .seconds(2), borrowingResponse: { result in
                    results.send((try? result.get()).map { Array($0) == large ? "large ok" : "large differs" } ?? "failed")
                })
                client.call(Array("drop".utf8), timeout: .milliseconds(50), borrowingResponse: { result in
                    if case .failure(let error) = result { results.send("\(error)") } else { results.send("answered") }
                })
                client.call(Array("fail".utf8), timeout: .seconds(2), borrowingResponse: { result in
                    if case .failure(let error) = result { results.send("\(error)") } else { results.send("answered") }
                })
                let received = await results.wait(count: 4)
                #expect(Set(received) == ["borrowed", "large ok", "\(NetError.timeout)", "\(NetError.protocolViolation("no such method"))"])
                client.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }

        @Test("mixed timeouts: a short call behind a long one times out on its own deadline, the long one survives")
        func mixedTimeouts() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let client = try await MuxClient.connect(to: server.address, dialer: Dialer(group: group))
                // The long call arms the client's sweep for 3 s; the short one must re-arm it earlier.
                let long = Task { try await client.call(Array("slow:400".utf8), timeout: .seconds(3)) }
                try await Task.sleep(for: .milliseconds(20))
                let started = ContinuousClock.now
                await #expect(throws: NetError.timeout) { try await client.call(Array("drop".utf8), timeout: .milliseconds(100)) }
                let waited = ContinuousClock.now - started
                #expect(waited >= .milliseconds(100) && waited < .milliseconds(350), "timed out after \(waited)")
                // Several short deadlines in a row, each expiring in its own sweep.
                for milliseconds in [60, 30, 90] {
                    await #expect(throws: NetError.timeout) { try await client.call(Array("drop".utf8), timeout: .milliseconds(milliseconds)) }
                }
                #expect(try await long.value == Array("slow:400".utf8), "the sweep fails only calls that are due")
                client.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }

        @Test("calls in flight fail with the close reason when the server shuts down")
        func serverShutdownInFlight() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let client = try await MuxClient.connect(to: server.address, dialer: Dialer(group: group))
                let pendingCall = Task { try await client.call(Array("drop".utf8), timeout: .seconds(10)) }
                try await Task.sleep(for: .milliseconds(50))
                await server.shutdown(gracePeriod: .milliseconds(100))
                await #expect(throws: NetError.closed(.peerClosed)) { _ = try await pendingCall.value }
                #expect(!client.isActive)
                await #expect(throws: NetError.self) { try await client.call([1], timeout: .seconds(1)) }
            }
        }

        @Test("a pool spreads calls over its connections and replaces a closed one")
        func pool() async throws {
            try await withGroup { group in
                let server = try Self.server(group: group)
                let pool = MuxPool(address: server.address, dialer: Dialer(group: group), size: 3)
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    for index in 0..<60 {
                        tasks.addTask {
                            let reply = try await pool.call(Array("n\(index)".utf8), timeout: .seconds(5))
                            #expect(reply == Array("n\(index)".utf8))
                        }
                    }
                    try await tasks.waitForAll()
                }
                // Clients that lost a race for a slot were closed; their close reaches the server a little later.
                #expect(await eventually { server.connectionCount == 3 }, "\(server.connectionCount) connections")
                let first = try await pool.client()
                first.close()
                try await Task.sleep(for: .milliseconds(50))
                for index in 0..<6 {
                    #expect(try await pool.call([UInt8(index)], timeout: .seconds(5)) == [UInt8(index)])
                }
                #expect(await eventually { server.connectionCount == 3 }, "the closed client was replaced")
                pool.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }
    }
}
