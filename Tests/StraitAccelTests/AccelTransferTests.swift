import Foundation
import StraitAccel
import StraitSystem
import StraitTestSupport
import Testing

@Suite("accel: byte-exact transfers through the redirect path", .serialized, kernelGate)
struct AccelTransferTests {
    static let sizes = [1, 2, 100, 1460, 4096, 65_535, 65_536, 1 << 20, 4 << 20]

    @Test("messages from 1 B to 4 MiB, both ways", arguments: TestFamily.allCases)
    func sizesBothWays(family: TestFamily) throws {
        try AccelFixture.with { fixture in
            let (client, server) = try fixture.pair(family)
            var offset: UInt64 = 0
            for size in Self.sizes {
                offset += 1
                let there = try transfer(from: client, to: server, count: size, chunk: size, seed: offset, shutdown: false)
                #expect(there.count == size && there.firstMismatch == nil, "client→server \(size) B over \(family)")
                let back = try transfer(from: server, to: client, count: size, chunk: size, seed: offset + 100, shutdown: false)
                #expect(back.count == size && back.firstMismatch == nil, "server→client \(size) B over \(family)")
            }
            let counters = try fixture.counters
            #expect(counters.redirected_messages >= UInt64(Self.sizes.count * 2), "the pair's sends must have been redirected, not passed to the stack")
            #expect(counters.fallback_no_peer_messages == 0)
        }
    }

    @Test("iovec counts and write sizes (test_sockmap-style matrix)", arguments: [1, 3, 16], [1, 97, 4096, 65_536])
    func scatterGather(iovecs: Int, iovecBytes: Int) throws {
        try AccelFixture.with { fixture in
            let (client, server) = try fixture.pair()
            let pattern = PatternStream(seed: UInt64(iovecs * 7 + iovecBytes))
            let total = iovecs * iovecBytes * 8
            let bytes = pattern.bytes(at: 0, count: total)
            nonisolated(unsafe) var received: (count: Int, firstMismatch: Int?) = (0, nil)
            try concurrently([
                {
                    try bytes.withUnsafeBytes { raw in
                        var offset = 0
                        while offset < total {
                            var vectors = (0..<iovecs).map { index in
                                iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress! + offset + index * iovecBytes), iov_len: iovecBytes)
                            }
                            var message = msghdr()
                            let length = vectors.count
                            let sent = try vectors.withUnsafeMutableBufferPointer { buffer in
                                message.msg_iov = buffer.baseAddress
                                message.msg_iovlen = length
                                return try systemCall("sendmsg") { sendmsg(client.fd, &message, Int32(MSG_NOSIGNAL)) }
                            }
                            #expect(sent == iovecs * iovecBytes, "blocking sendmsg sends everything")
                            offset += sent
                        }
                    }
                    try client.shutdownWrite()
                },
                { received = try server.receiveAndVerify(pattern) },
            ])
            #expect(received.count == total)
            #expect(received.firstMismatch == nil)
        }
    }

    @Test("many connections at once, each byte-exact")
    func manyConnections() throws {
        try AccelFixture.with { fixture in
            let pairs = try (0..<64).map { _ in try fixture.pair(.ipv4ToDualStack) }
            let bodies: [@Sendable () throws -> Void] = pairs.enumerated().map { index, pair in
                {
                    let size = 256 * 1024 + index * 4099
                    let result = try transfer(from: pair.client, to: pair.server, count: size, chunk: 16_384, seed: UInt64(index + 1))
                    guard result.count == size, result.firstMismatch == nil else {
                        throw TestFailure("pair \(index): got \(result.count) of \(size) bytes, first mismatch at \(String(describing: result.firstMismatch))")
                    }
                }
            }
            try concurrently(bodies)
            #expect(try fixture.counters.redirected_messages >= 64)
        }
    }

    @Test("the payload skips loopback: lo counters do not grow with it")
    func bypassesLoopback() throws {
        try AccelFixture.with { fixture in
            let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
            defer { namespace.delete() }
            let size = 64 << 20
            let before = try namespace.receiveCounters()
            let result = try fixture.cgroup.inside {
                try namespace.run {
                    let listener = try TestListener(.ipv4)
                    let (client, server) = try listener.connectPair()
                    return try transfer(from: client, to: server, count: size, chunk: 65_536)
                }
            }
            let after = try namespace.receiveCounters()
            #expect(result.count == size && result.firstMismatch == nil)
            // Handshake, FIN and ACK packets only: a few kilobytes for 64 MiB of payload.
            #expect(after.bytes - before.bytes < 64 * 1024, "loopback carried \(after.bytes - before.bytes) bytes for a \(size)-byte payload")
            #expect(try fixture.counters.redirected_bytes >= UInt64(size))
        }
    }
}
