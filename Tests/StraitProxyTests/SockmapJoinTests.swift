import Foundation
import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

/// ``SockmapForwarder`` below any relay: a socket joins the map with the head segment of its
/// receive queue partly read, as when userspace took a PROXY header or an `auto` sample off its
/// front. The kernel's strparser then starts its first message inside that segment. Its parser was
/// handed the whole segment, and a parser answering with the segment's length claimed the bytes
/// already read once more: every later message started inside a segment too and waited for that
/// many bytes of the next one, so the stream's last message never came out (seen on 6.18).
@Suite("sockmap join with a segment partly read")
struct SockmapJoinTests {
    /// Bytes the client writes at once before the join: one loopback segment.
    static let firstWrite = 4096
    /// Bytes after the join, in writes of 64 KiB.
    static let rest = 1 << 20

    /// Reads from `socket` until `count` bytes came, the peer closed, or a read waited 5 s; checks
    /// each byte against `pattern`. Returns the bytes read and the first wrong offset.
    static func receive(_ socket: TestSocket, _ pattern: PatternStream, count: Int) -> (count: Int, firstMismatch: Int?) {
        socket.setReceiveTimeout(seconds: 5)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        var mismatch: Int?
        while total < count {
            let want = min(buffer.count, count - total)
            guard let got = try? buffer.withUnsafeMutableBytes({ raw in
                try SocketCall.receive(socket.fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<want]))
            }), got > 0 else { break }
            if mismatch == nil, !buffer.withUnsafeBytes({ pattern.matches(UnsafeRawBufferPointer(rebasing: $0[0..<got]), at: total) }) {
                mismatch = total
            }
            total += got
        }
        return (total, mismatch)
    }

    /// The client writes one 4 KiB segment; the proxy's side reads `alreadyRead` bytes of it and
    /// writes them upstream itself, then the pair joins, and the client sends 1 MiB more: the
    /// upstream receives the whole stream, in order, to its last byte.
    @Test("every byte arrives after a join inside a segment", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)), arguments: [1, 100, 1000, 4000])
    func joinInsideSegment(alreadyRead: Int) throws {
        let forwarder = try SockmapForwarder()
        let front = try TestListener(.ipv4)
        let back = try TestListener(.ipv4)
        let (client, clientSide) = try front.connectPair()
        let (upstreamSide, upstream) = try back.connectPair()
        let pattern = PatternStream(seed: 0x5eed)
        let total = Self.firstWrite + Self.rest

        try client.sendAll(pattern.bytes(at: 0, count: Self.firstWrite))
        let deadline = Date().addingTimeInterval(5)
        while (try clientSide.readableBytes()) < Self.firstWrite, Date() < deadline { usleep(1000) }
        try #require(try clientSide.readableBytes() == Self.firstWrite, "the first write did not arrive whole")
        let early = try clientSide.receive(exactly: alreadyRead)
        try upstreamSide.sendAll(early)

        let pair = try forwarder.join(clientSide.fd, upstreamSide.fd, maxInFlight: 0)
        defer { forwarder.release(pair) }
        // A send timeout too: should nothing flow, the writer gives up instead of hanging the test.
        client.setReceiveTimeout(seconds: 5)
        let writer = Thread {
            try? pattern.forEachChunk(from: Self.firstWrite, count: Self.rest, chunk: 64 << 10) { try client.sendAll($0) }
        }
        writer.start()
        defer { while !writer.isFinished { usleep(1000) } }

        let received = Self.receive(upstream, pattern, count: total)
        #expect(received.firstMismatch == nil, "the upstream's bytes differ from offset \(received.firstMismatch ?? -1)")
        #expect(received.count == total, "stalled: the upstream got \(received.count) of \(total) bytes (\(alreadyRead) read before the join)")
    }
}
