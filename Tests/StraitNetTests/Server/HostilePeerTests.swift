import Foundation
import StraitSystem
import StraitTestSupport
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

extension Loopback {
/// StraitNet's servers against StraitTestSupport's `HostilePeers`: frames and headers above the
/// limits, a client that never reads, one that trickles, resets, half-closes early, idle hordes,
/// and a full descriptor table. Each asserts the bytes or a clean counted close, bounded memory,
/// descriptors back to the baseline, and a server still serving.
@Suite("Hostile peers against StraitNet servers")
struct NetHostilePeerTests {
    static let pattern = PatternStream(seed: 0x4E45_5448)

    /// Waits up to `seconds` for `condition`.
    static func eventually(seconds: Double = 5, _ condition: () -> Bool) async {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
    }

    /// An RPC frame header announcing `payload` bytes.
    static func frameHeader(payload: Int) -> [UInt8] {
        var bytes = [UInt8]()
        withUnsafeBytes(of: UInt32(9 + payload).bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt64(7).bigEndian) { bytes += $0 }
        return bytes + [Frame.Kind.request.rawValue]
    }

    @Test("a 5 MiB frame (between the 4 MiB input limit and the 16 MiB frame limit) is refused at its header, counted, and leaks nothing")
    func frameAboveInputLimit() async throws {
        try await withGroup { group in
            let before = descriptorSnapshot()
            let server = try Server(address: .loopback(port: 0), group: group, handlers: FrameServer.handlers { request in
                request.respond(request.payload)
            })
            let client = try HostilePeers.connect(port: server.address.port!, timeoutSeconds: 5)
            try client.sendAll(Self.frameHeader(payload: 5 << 20))
            try? client.send(Self.pattern, count: 5 << 20, chunk: 256 << 10)  // the server may close before the end
            #expect(client.polledReceiveOnce() <= 0, "the server neither answered nor closed")
            await Self.eventually { server.connectionCount == 0 }
            #expect(server.connectionCount == 0)
            #expect(server.refusedConnections == 1)
            // A frame that fits is still served.
            let good = try HostilePeers.connect(port: server.address.port!, timeoutSeconds: 5)
            let payload = Self.pattern.bytes(at: 0, count: 1 << 20)
            try good.sendAll(Self.frameHeader(payload: payload.count) + payload)
            let reply = try good.polledReceive(exactly: Frame.headerSize + payload.count)
            #expect(Array(reply.dropFirst(Frame.headerSize)) == payload)
            client.close()
            good.close()
            await server.shutdown(gracePeriod: .milliseconds(100))
            await Self.eventually { descriptorsOpened(since: before).isEmpty }  // the listener closes on its loop
            #expect(descriptorsOpened(since: before).isEmpty, "left open: \(descriptorsOpened(since: before))")
        }
    }

    /// A handler that waits for a whole HTTP request head (the proxy's /metrics, StraitNet's HTTP
    /// benchmark server): an endless header must be closed at the input limit, not held for ever.
    @Test("an HTTP-style server closes a 5 MiB header at its input limit and counts it")
    func oversizedHeader() async throws {
        try await withGroup { group in
            let before = descriptorSnapshot()
            let reasons = Signal<CloseReason>()
            let server = try Server(address: .loopback(port: 0), group: group, handlers: ConnectionHandlers(onRequest: { connection in
                let bytes = try connection.reader.peek(connection.reader.readableBytes)
                guard String(decoding: bytes, as: UTF8.self).contains("\r\n\r\n") else { return }
                try connection.reader.skip(bytes.count)
                connection.writer.write(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                connection.flush()
                connection.close()
            }, onDisconnect: { _, reason in reasons.send(reason) }))
            for _ in 0..<3 { try HostilePeers.oversizedHeader(try HostilePeers.connect(port: server.address.port!), size: 5 << 20) }
            let seen = await reasons.wait(count: 3)
            #expect(seen.filter { $0 == .inputLimit }.count == 3, "close reasons: \(seen)")
            #expect(server.refusedConnections == 3)
            let good = try HostilePeers.connect(port: server.address.port!, timeoutSeconds: 5)
            try good.sendAll(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(String(decoding: try good.receiveToEnd(), as: UTF8.self).hasSuffix("ok"))
            good.close()
            await server.shutdown(gracePeriod: .milliseconds(100))
            await Self.eventually { descriptorsOpened(since: before).isEmpty }  // the listener closes on its loop
            #expect(descriptorsOpened(since: before).isEmpty, "left open: \(descriptorsOpened(since: before))")
        }
    }

    @Test("an echo server under hostile clients: never-reads, trickle, reset, early half-close, 200 idle")
    func hostileMix() async throws {
        try await withGroup { group in
            let before = descriptorSnapshot()
            let start = ResourceSnapshot.now()
            let server = try Server(address: .loopback(port: 0), group: group, handlers: echoHandlers())
            let port = server.address.port!
            let horde = try HostilePeers.idleHorde(port: port, count: 200)
            let clients = try (0..<4).map { _ in try HostilePeers.connect(port: port) }
            let log = Mutex<[String: Int]>([:])
            try concurrently([
                {
                    // Never reads: the server's output passes its high watermark and it stops
                    // reading, so the push stalls with the connection's memory bounded.
                    let pushed = try HostilePeers.pushUntilStalled(clients[0], pattern: Self.pattern, limit: 256 << 20, stall: .seconds(1))
                    log.withLock { $0["pushed"] = pushed }
                },
                {
                    try HostilePeers.trickle(clients[1], bytes: Self.pattern.bytes(at: 0, count: 16))
                    try clients[1].shutdownWrite()
                    log.withLock { $0["trickle"] = try? clients[1].polledReceiveAndVerify(Self.pattern).count }
                },
                { try HostilePeers.resetAfter(clients[2], pattern: Self.pattern, count: 256 << 10) },
                { log.withLock { $0["halfClose"] = try? HostilePeers.halfCloseEarly(clients[3], pattern: Self.pattern, count: 64 << 10).count } },
            ])
            let results = log.withLock { $0 }
            let pushed = results["pushed"] ?? 0
            #expect(pushed < 64 << 20, "the never-reading client pushed \(pushed >> 20) MiB")
            #expect(results["trickle"] == 16 && results["halfClose"] == 64 << 10, "\(results)")
            #expect(ResourceSnapshot.now().resident - start.resident < 64 << 20, "RSS grew by \((ResourceSnapshot.now().resident - start.resident) >> 20) MiB")
            for socket in horde + clients { socket.close() }
            await Self.eventually { server.connectionCount == 0 }
            #expect(server.connectionCount == 0)
            let good = try HostilePeers.connect(port: port, timeoutSeconds: 5)
            try good.sendAll(Self.pattern.bytes(at: 0, count: 1000))
            #expect(try good.polledReceive(exactly: 1000) == Self.pattern.bytes(at: 0, count: 1000))
            good.close()
            await server.shutdown(gracePeriod: .milliseconds(100))
            await Self.eventually { descriptorsOpened(since: before).isEmpty }  // the listener closes on its loop
            #expect(descriptorsOpened(since: before).isEmpty, "left open: \(descriptorsOpened(since: before))")
        }
    }

    /// The soft RLIMIT_NOFILE lowered to a few above what is open (restored in defer): accepting
    /// backs off, is counted, and every queued client is served once descriptors free up.
    @Test("out of descriptors: the server backs off, counts it, and serves every client")
    func outOfDescriptors() async throws {
        try await withGroup(loops: 1) { group in
            let server = try Server(address: .loopback(port: 0), group: group, handlers: echoHandlers())
            let port = server.address.port!
            let clients = try (0..<30).map { _ in TestSocket(fd: try systemCall("socket") { socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0) }) }
            let saved = try ResourceLimits.openFiles()
            do {
                defer { try? ResourceLimits.setOpenFiles(saved) }
                try ResourceLimits.setOpenFiles(.init(soft: UInt64(ResourceSnapshot.now().descriptors + 4), hard: saved.hard))
                for client in clients {
                    try SocketAddress.loopback(port: port).withSockaddr { pointer, length throws(SystemCallError) in
                        _ = try systemCall("connect") { Glibc.connect(client.fd, pointer, length) }
                    }
                }
                // Polled without suspending: while the process is out of descriptors, a parked task
                // lets libdispatch's worker monitor run, and it traps when it cannot open
                // /proc/PID/stat (see the README's StraitNet limitations).
                let deadline = ContinuousClock.now + .seconds(5)
                while server.acceptBackoffs == 0 && ContinuousClock.now < deadline { usleep(5_000) }
            }
            #expect(server.acceptBackoffs >= 1, "the back-off was not counted")
            for client in clients {
                try client.sendAll(Self.pattern.bytes(at: 0, count: 100))
                #expect(try client.polledReceive(exactly: 100) == Self.pattern.bytes(at: 0, count: 100))
                client.close()
            }
            await server.shutdown(gracePeriod: .milliseconds(100))
        }
    }
}
}
