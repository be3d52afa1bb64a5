import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

/// Byte `index` of the test streams: a pattern whose every position is checked on arrival.
func patternByte(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 31 &+ index >> 8) }

func pattern(_ range: Range<Int>) -> [UInt8] { range.map(patternByte) }

/// What a server connection saw, kept in its `context`. Loop (or handler) only.
final class StreamTally {
    var received = 0
    var mismatches = 0
    /// Reader bytes at the last pause; growth while paused would mean the loop kept reading.
    var readerAtPause = 0
    var grewWhilePaused = false
    var pauses = 0
    var resumeTimer: LoopTimer?

    /// Consumes the reader, checking each byte against the pattern.
    func consume(_ reader: LinkBuffer) throws {
        while reader.readableBytes > 0 {
            let chunk = try reader.next(min(reader.readableBytes, 64 << 10))
            for byte in chunk {
                if byte != patternByte(received) { mismatches += 1 }
                received += 1
            }
        }
    }
}

extension Loopback {
@Suite("Half-closure, back-pressure and reset")
struct HalfCloseTests {
    @Test("the peer shuts its write side: we keep writing, then shutdownOutput; bytes exact both ways")
    func peerClosesFirst() async throws {
        try await withGroup { group in
            let request = 300_000, response = 2_000_000
            let inputClosed = Signal<Int>()
            let disconnects = Signal<CloseReason>()
            var configuration = ServerConfiguration()
            configuration.connection.allowRemoteHalfClosure = true
            let handlers = ConnectionHandlers(
                onConnect: { $0.context = StreamTally() },
                onRequest: { connection in try (connection.context as! StreamTally).consume(connection.reader) },
                onDisconnect: { _, reason in disconnects.send(reason) },
                onInputClosed: { connection in
                    let tally = connection.context as! StreamTally
                    inputClosed.send(tally.mismatches == 0 ? tally.received : -1)
                    // Far more than the socket buffers hold: most of it is written after the FIN.
                    connection.writer.write(pattern(0..<response))
                    connection.flush()
                    connection.shutdownOutput()
                }
            )
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send(pattern(0..<request))
            client.shutdownWrite()
            #expect(await inputClosed.wait() == [request])
            let reply = try client.receive(response + 1)
            #expect(reply.count == response)
            #expect(reply == pattern(0..<response))
            #expect(client.readsEndOfStream())
            #expect(await disconnects.wait() == [.local], "our FIN came last")
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("we shut our write side first: the peer keeps sending, its FIN then closes")
    func weCloseFirst() async throws {
        try await withGroup { group in
            let upload = 1_500_000
            let disconnects = Signal<CloseReason>()
            let received = Signal<Int>()
            var configuration = ServerConfiguration()
            configuration.connection.allowRemoteHalfClosure = true
            let handlers = ConnectionHandlers(
                onConnect: { connection in
                    connection.context = StreamTally()
                    connection.writer.write(string: "bye")
                    connection.flush()
                    connection.shutdownOutput()
                },
                onRequest: { connection in try (connection.context as! StreamTally).consume(connection.reader) },
                onDisconnect: { connection, reason in
                    let tally = connection.context as! StreamTally
                    received.send(tally.mismatches == 0 ? tally.received : -1)
                    disconnects.send(reason)
                },
                onInputClosed: { _ in Issue.record("both sides shut: it closes instead") }
            )
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            #expect(try client.receiveString(3) == "bye")
            #expect(client.readsEndOfStream(), "the server's FIN")
            try client.send(pattern(0..<upload))
            client.shutdownWrite()
            #expect(await disconnects.wait() == [.peerClosed], "the peer's FIN came last")
            #expect(received.values == [upload])
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("pausing reads under a fast sender: nothing is read while paused, every byte after resume")
    func pauseAndResume() async throws {
        try await withGroup { group in
            let total = 8 << 20, pauseEvery = 512 << 10
            let done = Signal<StreamTallySummary>()
            let handlers = ConnectionHandlers(
                onConnect: { connection in
                    let tally = StreamTally()
                    connection.context = tally
                    tally.resumeTimer = LoopTimer(loop: connection.loop) {
                        if connection.reader.readableBytes != tally.readerAtPause { tally.grewWhilePaused = true }
                        connection.resumeReading()
                    }
                },
                onRequest: { connection in
                    let tally = connection.context as! StreamTally
                    #expect(!connection.isReadingPaused, "no onRequest while paused")
                    let before = tally.received
                    try tally.consume(connection.reader)
                    if tally.received == total {
                        done.send(StreamTallySummary(tally))
                    } else if tally.received / pauseEvery != before / pauseEvery {
                        // The relay's move: the destination is full, stop the source for a while.
                        connection.pauseReading()
                        tally.pauses += 1
                        tally.readerAtPause = connection.reader.readableBytes
                        tally.resumeTimer?.schedule(after: .milliseconds(3))
                    }
                },
                onDisconnect: { connection, _ in (connection.context as? StreamTally)?.resumeTimer?.cancel() }
            )
            // Bursts of at most 256 KiB: every 512 KiB mark is crossed in its own handler call.
            var configuration = ServerConfiguration()
            configuration.connection.inputLimit = 256 << 10
            let server = try Server(address: .loopback(), group: group, configuration: configuration, handlers: handlers)
            let client = try PlainClient(server.address)
            // One blocking send of everything: the kernel holds it back whenever the server pauses.
            try client.send(pattern(0..<total))
            let summary = try #require(await done.wait(timeout: .seconds(20)).first)
            #expect(summary.received == total && summary.mismatches == 0)
            #expect(summary.pauses == total / pauseEvery - 1, "paused at every mark but the last")
            #expect(!summary.grewWhilePaused, "the reader did not grow while paused")
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("closeWithReset: the peer sees ECONNRESET, not end of stream")
    func reset() async throws {
        try await withGroup { group in
            let disconnects = Signal<CloseReason>()
            let handlers = ConnectionHandlers(
                onRequest: { connection in
                    connection.writer.write(string: "never sent, or cut off")
                    connection.flush()
                    connection.closeWithReset()
                },
                onDisconnect: { _, reason in disconnects.send(reason) }
            )
            let server = try Server(address: .loopback(), group: group, handlers: handlers)
            let client = try PlainClient(server.address)
            try client.send("x")
            #expect(await disconnects.wait() == [.local])
            var error: SystemCallError?
            do {
                // Bytes sent before the reset may arrive first; the stream then ends in a reset.
                for _ in 0..<4 { if try client.receive(64).isEmpty { break } }
            } catch let caught as SystemCallError {
                error = caught
            }
            #expect(error?.errno == .connectionReset)
            await server.shutdown(gracePeriod: .seconds(1))
        }
    }
}
}

/// A Sendable copy of a ``StreamTally`` at the end of a stream.
struct StreamTallySummary: Sendable {
    let received: Int, mismatches: Int, pauses: Int, grewWhilePaused: Bool

    init(_ tally: StreamTally) {
        received = tally.received
        mismatches = tally.mismatches
        pauses = tally.pauses
        grewWhilePaused = tally.grewWhilePaused
    }
}
