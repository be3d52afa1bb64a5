import CStraitSystem
import Foundation
import StraitBPF
import StraitKernelABI
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

/// Echoes until the peer's FIN (or an error), then closes.
func polledEchoHandler(_ socket: TestSocket) {
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let got = buffer.withUnsafeMutableBytes { socket.polledReceive(into: $0) }
        if got <= 0 { break }
        do { try buffer.withUnsafeBytes { try socket.sendAll(UnsafeRawBufferPointer(rebasing: $0[0..<got])) } } catch { break }
    }
    socket.close()
}

/// An upstream on 127.0.0.1 whose listener has an accept queue of one, filled by a plug
/// connection (made before the proxy starts, so untracked): the proxy's SYN is dropped, and its
/// dial waits for the retransmission a second later. Until ``unplug()`` nothing is accepted; then
/// every connection runs `handler` on its own thread.
final class PluggedUpstream: @unchecked Sendable {
    let fd: CInt
    let port: UInt16
    private var plug: TestSocket?
    private let handler: @Sendable (TestSocket) -> Void
    private var stopped = false

    var address: SocketAddress { .ip(IPAddress("127.0.0.1")!, port: port) }

    /// The listener is made inside `cg`.
    init(in cg: TestCgroup, _ handler: @escaping @Sendable (TestSocket) -> Void) throws {
        self.handler = handler
        let listener = try cg.inside { () throws -> (CInt, UInt16) in
            let fd = try systemCall("socket") { socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let length = socklen_t(MemoryLayout<sockaddr_in>.size)
            do {
                _ = try withUnsafePointer(to: &address) { pointer in
                    try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in try systemCall("bind") { bind(fd, raw, length) } }
                }
                _ = try systemCall("listen") { listen(fd, 0) }
            } catch {
                close(fd)
                throw error
            }
            var bound = sockaddr_in()
            var boundLength = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &boundLength) } }
            return (fd, UInt16(bigEndian: bound.sin_port))
        }
        (fd, port) = listener
        plug = try TestCgroup.outside { try connectClient(port: port, timeoutSeconds: 10) }
    }

    /// Empties the accept queue and starts accepting.
    func unplug() {
        let accepted = accept(fd, nil, nil)
        if accepted >= 0 { close(accepted) }
        plug = nil
        let fd = self.fd
        let handler = self.handler
        Thread.detachNewThread {
            while true {
                let accepted = accept(fd, nil, nil)
                if accepted < 0 {
                    if errno == EINTR { continue }
                    return
                }
                let socket = TestSocket(fd: accepted)
                socket.setReceiveTimeout(seconds: SkmsgTests.timeout)
                Thread.detachNewThread { handler(socket) }
            }
        }
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        shutdown(fd, CInt(SHUT_RDWR))
        close(fd)
    }

    deinit { stop() }
}

/// The skmsg datapath against the real kernel: endpoints (clients and upstream servers) whose
/// sockets live in a per-test cgroup, and a proxy in this process whose `endpoints_cgroup` is that
/// cgroup. Every read gives up after 10 s, every blocking send too (SO_SNDTIMEO).
@Suite("skmsg datapath", .serialized)
struct SkmsgTests {
    static let timeout = 10

    static func config(_ cg: TestCgroup, datapath: Datapath = .skmsg, upstreams: [SocketAddress]) -> ProxyConfig {
        var config = ProxyHarness.config(datapath: datapath, upstreams: upstreams)
        config.endpointsCgroup = cg.cgroup.path
        return config
    }

    /// A client connected to the proxy from inside `cg` (tracked) or, with nil, from outside. It
    /// sends `first` right after connect, before leaving the cgroup (moving back takes
    /// milliseconds, time enough for the relay to dial upstream and route the client): bytes sent
    /// before the relay has a route.
    static func client(port: UInt16, in cg: TestCgroup?, first: [UInt8] = []) throws -> TestSocket {
        let connect = {
            let client = try connectClient(port: port, timeoutSeconds: timeout)
            if !first.isEmpty { try client.sendAll(first) }
            return client
        }
        if let cg { return try cg.inside(connect) }
        return try TestCgroup.outside(connect)
    }

    /// Request/response turns of 1000 bytes with an echoing upstream, from stream offset
    /// `offset`, until both directions have switched (at least one turn, at most 50).
    /// The relay tells the kernel what it forwarded just after writing it; an echo can beat that
    /// and make the next send wait one more turn, so a turn starts 2 ms after the last echo.
    static func turnsUntilSwitched(_ client: TestSocket, _ proxy: Proxy, from offset: inout Int) throws {
        for turn in 0..<50 {
            if turn > 0, (proxy.skmsgCounters?.directions_switched ?? 0) >= 2 { return }
            if turn > 0 { usleep(2000) }
            let message = clientPattern.bytes(at: offset, count: 1000)
            try client.sendAll(message)
            #expect(try client.polledReceive(exactly: 1000) == message, "turn \(turn)")
            offset += 1000
        }
    }

    /// An upstream whose listener (so every accepted socket) is inside `cg`, or outside with nil.
    static func upstream(in cg: TestCgroup?, _ handler: @escaping @Sendable (TestSocket) -> Void) throws -> ThreadedUpstream {
        let bounded: @Sendable (TestSocket) -> Void = { socket in
            socket.setReceiveTimeout(seconds: timeout)
            handler(socket)
        }
        if let cg { return try cg.inside { try ThreadedUpstream(bounded) } }
        return try TestCgroup.outside { try ThreadedUpstream(bounded) }
    }

    static func counters(_ proxy: Proxy) throws -> strait_endpoint_counters {
        try #require(proxy.skmsgCounters, "the proxy has no endpoint forwarder")
    }

    static func show(_ c: strait_endpoint_counters) -> String {
        "tracked \(c.endpoints_tracked), switched \(c.directions_switched), redirected \(c.redirected_bytes) B in \(c.redirected_messages), passed \(c.passed_bytes) B, failures \(c.redirect_failures)"
    }

    /// The 16-byte header of a duplex transfer: bytes up, bytes down.
    static func header(up: Int, down: Int) -> [UInt8] {
        var header = [UInt8]()
        withUnsafeBytes(of: UInt64(up).littleEndian) { header += $0 }
        withUnsafeBytes(of: UInt64(down).littleEndian) { header += $0 }
        return header
    }

    /// Client side of a duplex transfer (see `polledDuplexHandler`) on a `client` that has sent
    /// its ``header(up:down:)`` (by copy: at connect, before the relay has a route): after a pause
    /// (so the client switches at its next send), `up` bytes in writes of `chunk` while reading
    /// and verifying the upstream's bytes.
    static func duplex(_ client: TestSocket, up: Int, down: Int, chunk: Int) throws -> (count: Int, firstMismatch: Int?) {
        usleep(50_000)
        let writer = Thread {
            try? client.send(clientPattern, count: up, chunk: chunk)
            try? client.shutdownWrite()
        }
        writer.start()
        defer { while !writer.isFinished { usleep(1000) } }
        return try client.polledReceiveAndVerify(upstreamPattern)
    }

    /// Sends `pattern` from `offset` to `end` in writes of 1–4 KiB, pausing once for 20 ms at
    /// `pauseAt` (the relay catches up there, so a sender still on copy switches mid-stream).
    static func smallWrites(_ socket: TestSocket, _ pattern: PatternStream, from offset: Int, to end: Int, random: inout SeededRandom, pauseAt: Int) throws {
        var offset = offset
        var paused = false
        while offset < end {
            let length = min(Int.random(in: 1024...4096, using: &random), end - offset)
            try socket.sendAll(pattern.bytes(at: offset, count: length))
            offset += length
            if !paused && offset >= pauseAt {
                paused = true
                usleep(20_000)
            }
        }
    }

    /// Waits up to `seconds` for `condition`.
    static func eventually(seconds: Double = 5, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }

    // MARK: 1. Byte-exact

    @Test("byte-exact both ways, random sizes up to 64 MiB, both endpoints tracked", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func byteExactBothTracked() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var random = SeededRandom(seed: seed)
        let transfers: [(up: Int, down: Int, chunk: Int)] = [
            (1, 1, 1),
            (Int.random(in: 1...65_536, using: &random), Int.random(in: 1...65_536, using: &random), Int.random(in: 1...16_384, using: &random)),
            (Int.random(in: 1...(8 << 20), using: &random), Int.random(in: 1...(8 << 20), using: &random), Int.random(in: 1...262_144, using: &random)),
            (64 << 20, Int.random(in: 1...(64 << 20), using: &random), Int.random(in: 4096...1_048_573, using: &random)),
        ]
        try await TestCgroup.with { cg in
            let log = TransferLog()
            let upstream = try Self.upstream(in: cg, duplexHandler(log, polled: true))
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                for (up, down, chunk) in transfers {
                    let client = try Self.client(port: port, in: cg, first: Self.header(up: up, down: down))
                    let received = try Self.duplex(client, up: up, down: down, chunk: chunk)
                    #expect(received.count == down, "seed \(seed): downstream \(received.count) of \(down)")
                    #expect(received.firstMismatch == nil, "seed \(seed): downstream differs at \(received.firstMismatch ?? -1)")
                }
                try await Self.eventually { log.all.count >= transfers.count }
                let seen = log.all
                #expect(seen.map(\.count).sorted() == transfers.map(\.up).sorted(), "seed \(seed): upstream counts")
                #expect(seen.allSatisfy { $0.mismatch == nil }, "seed \(seed): upstream bytes differ")
                let c = try Self.counters(proxy)
                let sent = transfers.reduce(0) { $0 + 16 + $1.up + $1.down }
                #expect(c.endpoints_tracked == UInt64(2 * transfers.count), "seed \(seed): \(Self.show(c))")
                #expect(c.directions_switched >= 1, "seed \(seed): \(Self.show(c))")
                #expect(c.redirected_bytes > 0, "seed \(seed): \(Self.show(c))")
                #expect(c.redirected_bytes + c.passed_bytes == UInt64(sent), "seed \(seed): every endpoint byte counted once: \(sent) sent, \(Self.show(c))")
                #expect(c.redirect_failures == 0, "seed \(seed): \(Self.show(c))")
            }
        }
    }

    // MARK: 2. Early sender

    @Test("a client that sends before the proxy dials, then takes turns and half-closes: every byte in order", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func earlySender() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var random = SeededRandom(seed: seed)
        try await TestCgroup.with { cg in
            // Plugged for the first round: the relay cannot route that client for a second.
            let upstream = try PluggedUpstream(in: cg, polledEchoHandler)
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                var sent = 0
                for round in 0..<8 {
                    // Right after connect, before the proxy has dialed upstream. Odd rounds send a
                    // second burst before reading anything.
                    let bursts = round % 2 == 0 ? [Int.random(in: 1...65_536, using: &random)] : [Int.random(in: 1...32_768, using: &random), Int.random(in: 1...32_768, using: &random)]
                    var offset = bursts[0]
                    let client = try Self.client(port: port, in: cg, first: clientPattern.bytes(at: 0, count: bursts[0]))
                    if bursts.count > 1 {
                        try client.sendAll(clientPattern.bytes(at: offset, count: bursts[1]))
                        offset += bursts[1]
                    }
                    if round == 0 {
                        usleep(100_000)
                        let c = try Self.counters(proxy)
                        #expect(c.passed_bytes == UInt64(offset) && c.redirected_bytes == 0, "seed \(seed): the first client's early bytes take its own connection: \(Self.show(c))")
                        upstream.unplug()
                    }
                    let echoed = try client.polledReceive(exactly: offset)
                    #expect(echoed.count == offset && echoed.withUnsafeBytes { clientPattern.matches($0, at: 0) }, "seed \(seed) round \(round): early bytes echoed exactly")
                    for turn in 0..<16 {
                        let length = Int.random(in: 1...32_768, using: &random)
                        try client.sendAll(clientPattern.bytes(at: offset, count: length))
                        let back = try client.polledReceive(exactly: length)
                        #expect(back.count == length && back.withUnsafeBytes { clientPattern.matches($0, at: offset) }, "seed \(seed) round \(round) turn \(turn): \(back.count) of \(length) bytes, in order")
                        offset += length
                    }
                    try client.shutdownWrite()
                    #expect(client.polledReceiveOnce() == 0, "seed \(seed) round \(round): FIN after the last echo")
                    sent += 2 * offset
                }
                // Later clients may race the relay either way; all of them switch.
                let c = try Self.counters(proxy)
                #expect(c.directions_switched >= 8, "seed \(seed): every client switches: \(Self.show(c))")
                #expect(c.redirected_bytes > 0, "seed \(seed): \(Self.show(c))")
                #expect(c.redirected_bytes + c.passed_bytes == UInt64(sent), "seed \(seed): \(sent) sent, \(Self.show(c))")
            }
        }
    }

    // MARK: 3. Continuous small writes

    @Test("continuous 1–4 KiB writes across the switch: order and content intact", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func smallWritesAcrossSwitch() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        let count = 3 << 20
        let connections = 3
        try await TestCgroup.with { cg in
            let log = TransferLog()
            let upstream = try Self.upstream(in: cg) { socket in
                // The upstream streams small writes back at the same time.
                let writer = Thread {
                    var random = SeededRandom(seed: seed ^ UInt64(socket.fd))
                    try? Self.smallWrites(socket, upstreamPattern, from: 0, to: count, random: &random, pauseAt: count / 3)
                    try? socket.shutdownWrite()
                }
                writer.start()
                if let result = try? socket.polledReceiveAndVerify(clientPattern) { log.add(result) }
                while !writer.isFinished { usleep(1000) }
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                var random = SeededRandom(seed: seed)
                for connection in 0..<connections {
                    // The first write right after connect (before the relay has a route), the rest
                    // continuously from another thread.
                    let first = Int.random(in: 1024...4096, using: &random)
                    let client = try Self.client(port: port, in: cg, first: clientPattern.bytes(at: 0, count: first))
                    let writerSeed = random.next()
                    let writer = Thread {
                        var random = SeededRandom(seed: writerSeed)
                        try? Self.smallWrites(client, clientPattern, from: first, to: count, random: &random, pauseAt: count / 4)
                        try? client.shutdownWrite()
                    }
                    writer.start()
                    let received = try client.polledReceiveAndVerify(upstreamPattern)
                    while !writer.isFinished { usleep(1000) }
                    #expect(received.count == count, "seed \(seed) connection \(connection): client got \(received.count) of \(count)")
                    #expect(received.firstMismatch == nil, "seed \(seed) connection \(connection): client stream differs at \(received.firstMismatch ?? -1)")
                }
                try await Self.eventually { log.all.count >= connections }
                #expect(log.all.map(\.count) == Array(repeating: count, count: connections), "seed \(seed): upstream counts")
                #expect(log.all.allSatisfy { $0.mismatch == nil }, "seed \(seed): upstream streams differ: \(log.all.map(\.mismatch))")
                let c = try Self.counters(proxy)
                // A sender switches at a send that finds the relay holding none of its bytes: the 20 ms
                // pause gives each one the chance, but on a busy machine one may miss it.
                #expect(c.directions_switched >= 1 && c.directions_switched <= UInt64(2 * connections), "senders switch at most once: \(Self.show(c))")
                #expect(c.passed_bytes > 0 && c.redirected_bytes > 0, "both paths carried part of the client streams: \(Self.show(c))")
                #expect(c.passed_bytes + c.redirected_bytes == UInt64(2 * connections * count), "\(Self.show(c))")
            }
        }
    }

    // MARK: 4. Half-close

    @Test("the client half-closes first: the upstream reads everything, then still sends", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func clientHalfClosesFirst() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var random = SeededRandom(seed: seed)
        let up = Int.random(in: 2...(4 << 20), using: &random)
        let down = Int.random(in: 1...(4 << 20), using: &random)
        try await TestCgroup.with { cg in
            let log = TransferLog()
            let upstream = try Self.upstream(in: cg) { socket in
                guard let result = try? socket.polledReceiveAndVerify(clientPattern) else { return }
                log.add(result)
                try? socket.send(upstreamPattern, count: down, chunk: 65_536)
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                // One byte at connect (copied: the relay has no route yet), a pause for the relay to
                // forward it, then the rest: the client switches mid-stream, the upstream (which sends
                // only after the client's FIN) at its first send.
                let client = try Self.client(port: port, in: cg, first: clientPattern.bytes(at: 0, count: 1))
                usleep(50_000)
                try clientPattern.forEachChunk(from: 1, count: up - 1, chunk: 65_536) { try client.sendAll($0) }
                try client.shutdownWrite()
                let received = try client.polledReceiveAndVerify(upstreamPattern)
                #expect(received.count == down && received.firstMismatch == nil, "seed \(seed): client got \(received.count) of \(down) after its own FIN, mismatch at \(received.firstMismatch ?? -1)")
                try await Self.eventually { !log.all.isEmpty }
                #expect(log.all.first?.count == up, "seed \(seed): upstream got \(log.all.first?.count ?? -1) of \(up) before EOF")
                #expect(log.all.first?.mismatch == nil, "seed \(seed): upstream stream differs at \(log.all.first?.mismatch ?? -1)")
                let c = try Self.counters(proxy)
                #expect(c.directions_switched == 2, "seed \(seed): \(Self.show(c))")
                #expect(c.passed_bytes <= 1 && c.passed_bytes + c.redirected_bytes == UInt64(up + down), "seed \(seed): all but the first byte redirected: \(Self.show(c))")
            }
        }
    }

    @Test("the upstream half-closes first: the client reads everything, then still sends", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func upstreamHalfClosesFirst() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var random = SeededRandom(seed: seed)
        let up = Int.random(in: 1...(4 << 20), using: &random)
        let down = Int.random(in: 1...(4 << 20), using: &random)
        try await TestCgroup.with { cg in
            let log = TransferLog()
            let upstream = try Self.upstream(in: cg) { socket in
                // A FIN that reaches the proxy before it arms the routes keeps the whole relay on
                // copy (its socket is past ESTABLISHED and cannot join the hash): with a short
                // stream it can, so the upstream gives the proxy 50 ms first.
                usleep(50_000)
                try? socket.send(upstreamPattern, count: down, chunk: 65_536)
                try? socket.shutdownWrite()
                if let result = try? socket.polledReceiveAndVerify(clientPattern) { log.add(result) }
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                let received = try client.polledReceiveAndVerify(upstreamPattern)
                #expect(received.count == down && received.firstMismatch == nil, "seed \(seed): client got \(received.count) of \(down) before EOF, mismatch at \(received.firstMismatch ?? -1)")
                try client.send(clientPattern, count: up, chunk: 65_536)
                try client.shutdownWrite()
                #expect(client.polledReceiveOnce() == 0, "seed \(seed): the client sees the end after its own FIN")
                try await Self.eventually { !log.all.isEmpty }
                #expect(log.all.first?.count == up, "seed \(seed): upstream read \(log.all.first?.count ?? -1) of \(up) after its own FIN")
                #expect(log.all.first?.mismatch == nil, "seed \(seed): upstream stream differs at \(log.all.first?.mismatch ?? -1)")
                // The client's first send comes long after its route: all of its bytes redirect. The
                // upstream's may not all: its first send can still find the route not yet published.
                let c = try Self.counters(proxy)
                #expect(c.directions_switched >= 1 && c.redirected_bytes >= UInt64(up), "seed \(seed): \(up) client bytes: \(Self.show(c))")
                #expect(c.redirected_bytes + c.passed_bytes == UInt64(up + down), "seed \(seed): \(Self.show(c))")
            }
        }
    }

    // MARK: 5. Resets

    @Test("a client reset (SO_LINGER 0) resets the upstream promptly", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func clientReset() async throws {
        try await TestCgroup.with { cg in
            let endings = Endings()
            let upstream = try Self.upstream(in: cg) { socket in
                var buffer = [UInt8](repeating: 0, count: 1 << 16)
                while true {
                    let got = buffer.withUnsafeMutableBytes { socket.polledReceive(into: $0) }
                    if got < 0 {
                        endings.add(got)
                        break
                    }
                    if got == 0 {
                        // EOF: a reset may still follow; sending shows it.
                        var byte: UInt8 = 0
                        var result = 0
                        for _ in 0..<4 where result == 0 {
                            usleep(50_000)
                            if send(socket.fd, &byte, 1, Int32(MSG_NOSIGNAL)) < 0 { result = -Int(errno) }
                        }
                        endings.add(result)
                        break
                    }
                    do { try buffer.withUnsafeBytes { try socket.sendAll(UnsafeRawBufferPointer(rebasing: $0[0..<got])) } } catch { break }
                }
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                var offset = 0
                try Self.turnsUntilSwitched(client, proxy, from: &offset)
                let before = try Self.counters(proxy)
                #expect(before.directions_switched == 2, "both directions redirect before the reset: \(Self.show(before))")
                let start = ContinuousClock.now
                resetClose(client)
                try await Self.eventually { !endings.all.isEmpty }
                let elapsed = ContinuousClock.now - start
                #expect(endings.all == [-Int(ECONNRESET)], "the upstream's connection ended with \(endings.all) (0 = FIN and no reset, -errno)")
                #expect(elapsed < .seconds(1), "reset carried in \(elapsed)")
                try await Self.eventually { ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"client_reset\"") >= 1 }
                #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"client_reset\"") == 1)
            }
        }
    }

    @Test("an upstream reset resets the client promptly", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func upstreamReset() async throws {
        try await TestCgroup.with { cg in
            let upstream = try Self.upstream(in: cg) { socket in
                // Echoes 1000-byte turns; 1000 "R"s are the cue to reset.
                while let message = try? socket.polledReceive(exactly: 1000), message.count == 1000 {
                    if message == Self.resetCue {
                        resetClose(socket)
                        return
                    }
                    guard (try? socket.sendAll(message)) != nil else { return }
                }
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                var offset = 0
                try Self.turnsUntilSwitched(client, proxy, from: &offset)
                let before = try Self.counters(proxy)
                #expect(before.directions_switched == 2, "both directions redirect before the reset: \(Self.show(before))")
                let start = ContinuousClock.now
                try client.sendAll(Self.resetCue)
                let got = client.polledReceiveOnce()
                let elapsed = ContinuousClock.now - start
                #expect(got == -Int(ECONNRESET), "the client's read returned \(got) (0 = FIN, -errno)")
                #expect(elapsed < .seconds(1), "reset carried in \(elapsed)")
                try await Self.eventually { ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"upstream_reset\"") >= 1 }
                #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"upstream_reset\"") == 1)
            }
        }
    }

    static let resetCue = [UInt8](repeating: 0x52, count: 1000)

    // MARK: 6. Mixed locality

    enum Locality: String, CaseIterable, CustomStringConvertible {
        case onlyClientInside, onlyUpstreamInside
        var description: String { rawValue }
    }

    @Test("one endpoint tracked, the other not: byte-exact both ways", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)), arguments: Locality.allCases)
    func mixedLocality(locality: Locality) async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var random = SeededRandom(seed: seed)
        let transfers: [(up: Int, down: Int, chunk: Int)] = [
            (Int.random(in: 1...65_536, using: &random), Int.random(in: 1...65_536, using: &random), Int.random(in: 1...16_384, using: &random)),
            (Int.random(in: 1...(16 << 20), using: &random), Int.random(in: 1...(16 << 20), using: &random), Int.random(in: 4096...262_144, using: &random)),
        ]
        try await TestCgroup.with { cg in
            let log = TransferLog()
            let upstream = try Self.upstream(in: locality == .onlyUpstreamInside ? cg : nil, duplexHandler(log, polled: true))
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                for (up, down, chunk) in transfers {
                    let client = try Self.client(port: port, in: locality == .onlyClientInside ? cg : nil, first: Self.header(up: up, down: down))
                    let received = try Self.duplex(client, up: up, down: down, chunk: chunk)
                    #expect(received.count == down, "seed \(seed) \(locality): downstream \(received.count) of \(down)")
                    #expect(received.firstMismatch == nil, "seed \(seed) \(locality): downstream differs at \(received.firstMismatch ?? -1)")
                }
                try await Self.eventually { log.all.count >= transfers.count }
                #expect(log.all.map(\.count).sorted() == transfers.map(\.up).sorted(), "seed \(seed) \(locality): upstream counts")
                #expect(log.all.allSatisfy { $0.mismatch == nil }, "seed \(seed) \(locality): upstream bytes differ")
                let c = try Self.counters(proxy)
                let trackedSent = transfers.reduce(0) { $0 + (locality == .onlyClientInside ? 16 + $1.up : $1.down) }
                #expect(c.endpoints_tracked == UInt64(transfers.count), "seed \(seed) \(locality): \(Self.show(c))")
                #expect(c.redirected_bytes + c.passed_bytes == UInt64(trackedSent), "seed \(seed) \(locality): the tracked side's \(trackedSent) bytes, counted once: \(Self.show(c))")
                #expect(c.directions_switched >= 1 && c.redirected_bytes > 0, "seed \(seed) \(locality): \(Self.show(c))")
            }
        }
    }

    // MARK: 7. auto

    @Test("auto with local endpoints relays on skmsg", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func autoPicksSkmsg() async throws {
        try await TestCgroup.with { cg in
            let upstream = try Self.upstream(in: cg, polledEchoHandler)
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, datapath: .auto, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                var offset = 0
                for length in [100, 1000, 70_000, 1 << 20, 10] {
                    try client.sendAll(clientPattern.bytes(at: offset, count: length))
                    let back = try client.polledReceive(exactly: length)
                    #expect(back.count == length && back.withUnsafeBytes { clientPattern.matches($0, at: offset) }, "\(length) bytes echoed in order")
                    offset += length
                }
                try client.shutdownWrite()
                #expect(client.polledReceiveOnce() == 0)
                // Bytes are counted when the relay closes.
                try await Self.eventually { ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "datapath=\"skmsg\"") > 0 }
                let skmsg = ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "datapath=\"skmsg\"")
                #expect(skmsg >= Double(2 * offset), "skmsg bytes \(skmsg) for \(offset) each way; \(proxy.metrics.exposition().split(separator: "\n").filter { $0.hasPrefix("strait_proxy_bytes_total") })")
                #expect(ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "datapath=\"sockmap\"") == 0)
                let c = try Self.counters(proxy)
                #expect(c.directions_switched >= 1 && c.redirected_bytes > 0, "\(Self.show(c))")
            }
        }
    }

    // MARK: 8. Configuration

    static let minimalYAML = """
        listeners:
          - bind: 127.0.0.1:6000
            cluster: b
        clusters:
          - name: b
            upstreams: [127.0.0.1:1]

        """

    @Test("endpoints_cgroup: an absolute path is read, a relative one is an error with its position")
    func endpointsCgroupConfig() throws {
        let config = try ProxyConfigLoader.parse(Self.minimalYAML + "endpoints_cgroup: /sys/fs/cgroup/unified/x\n", file: "good.yaml")
        #expect(config.endpointsCgroup == "/sys/fs/cgroup/unified/x")
        #expect(try ProxyConfigLoader.parse(Self.minimalYAML, file: "good.yaml").endpointsCgroup == nil)
        do {
            _ = try ProxyConfigLoader.parse(Self.minimalYAML + "endpoints_cgroup: unified/x\n", file: "bad.yaml")
            Issue.record("a relative endpoints_cgroup was accepted")
        } catch {
            #expect(error.file == "bad.yaml")
            #expect(error.line == 7 && error.column == 19, "\(error)")
            #expect(error.message.contains("absolute path"), "\(error)")
            #expect(error.description.hasPrefix("bad.yaml:7:19: "), "\(error)")
        }
    }

    @Test("a proxy whose endpoints cgroup does not exist refuses to start and says why", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func missingEndpointsCgroup() throws {
        try TestCgroup.with { cg in
            let missing = cg.cgroup.path + "/not-there"
            var config = ProxyHarness.config(datapath: .skmsg, upstreams: [.ip(IPAddress("127.0.0.1")!, port: 9)])
            config.endpointsCgroup = missing
            do {
                let proxy = try Proxy(config: config, loopCount: 1, logger: ProxyHarness.logger)
                Issue.record("started with a missing endpoints cgroup")
                _ = proxy
            } catch {
                let text = "\(error)"
                #expect(text.contains(missing), "names the path: \(text)")
                #expect(text.contains("cgroup v2 directory") && text.contains("exist"), "says a cgroup v2 directory must exist: \(text)")
                #expect(!text.contains("pinned") && !text.contains("bpffs"), "no unrelated advice: \(text)")
            }
            let attached = try cg.cgroup.attachedProgramIDs()
            #expect(attached.isEmpty, "nothing attached by the failed start: \(attached)")
        }
    }

    // MARK: 9. Teardown

    @Test("after shutdown no sock_ops program stays attached to the endpoints cgroup", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func teardownDetaches() async throws {
        try await TestCgroup.with { cg in
            let before = try cg.cgroup.attachedProgramIDs()
            #expect(before.isEmpty)
            let upstream = try Self.upstream(in: cg, polledEchoHandler)
            defer { upstream.stop() }
            var proxy: Proxy? = try Proxy(config: Self.config(cg, upstreams: [upstream.address]), loopCount: 2, logger: ProxyHarness.logger)
            let running = try cg.cgroup.attachedProgramIDs()
            #expect(running.count == 1, "the proxy's sock_ops program is attached while it runs: \(running)")
            let port = try #require(proxy?.listenerAddresses.values.first?.port)
            let client = try Self.client(port: port, in: cg)
            var offset = 0
            if let proxy { try Self.turnsUntilSwitched(client, proxy, from: &offset) }
            #expect(proxy?.skmsgCounters?.directions_switched == 2)
            try client.shutdownWrite()
            #expect(client.polledReceiveOnce() == 0)
            await proxy?.shutdown(drainTimeout: .seconds(2))
            let afterShutdown = try cg.cgroup.attachedProgramIDs()
            proxy = nil
            let afterRelease = try cg.cgroup.attachedProgramIDs()
            #expect(afterShutdown.isEmpty, "still attached after shutdown: \(afterShutdown)")
            #expect(afterRelease.isEmpty, "still attached after the Proxy is released: \(afterRelease)")
        }
    }

    // MARK: Kernel behaviour the datapath exposes

    /// Every socket the endpoint filter matches goes into a sockhash, so the kernel's
    /// `tcp_bpf_recvmsg` serves its reads. Its blocking wait returns EAGAIN after any wake-up that
    /// left no data: the wake-up of an incoming RST gives EAGAIN first and ECONNRESET only on the
    /// next call, and the write-space wake-ups of a concurrent sender give EAGAIN too. Plain TCP
    /// blocks until data, end of stream or the error. Programs that treat EAGAIN from a blocking
    /// socket as an error break on tracked endpoints, so only the endpoints of skmsg and auto
    /// listeners are tracked: those of a copy listener keep plain TCP.
    @Test("a tracked endpoint's blocking recv behaves as on plain TCP", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func blockingReceiveOnTrackedEndpoint() async throws {
        for tracked in [false, true] {
            try await TestCgroup.with { cg in
                let upstream = try Self.upstream(in: cg) { socket in
                    _ = socket.polledReceiveOnce()
                    usleep(100_000)
                    resetClose(socket)
                }
                defer { upstream.stop() }
                var config = ProxyHarness.config(datapath: .skmsg, upstreams: [upstream.address])
                if tracked { config.endpointsCgroup = cg.cgroup.path }
                try await ProxyHarness.with(config) { proxy, port in
                    let client = try Self.client(port: port, in: cg)
                    try client.sendAll([1])
                    let first = receiveOnce(client)  // blocking, SO_RCVTIMEO 10 s
                    let second = receiveOnce(client)
                    if !tracked {
                        #expect(first == -Int(ECONNRESET), "plain TCP: the reset is the first read's result, got \(first)")
                    } else {
                        #expect(proxy.skmsgCounters?.endpoints_tracked == 2)
                        withKnownIssue("kernel tcp_bpf_recvmsg: a blocking recv woken by the RST returns EAGAIN, then ECONNRESET") {
                            #expect(first == -Int(ECONNRESET), "tracked: first read \(first), second \(second)")
                        }
                    }
                }
            }
        }
        // A concurrent sender: the reader's blocking recv must only ever return data or the end.
        try await TestCgroup.with { cg in
            let upstream = try Self.upstream(in: cg) { socket in
                var total = 0
                while total < 16 << 20 {
                    let got = socket.polledReceiveOnce(max: 1 << 20)
                    if got <= 0 { break }
                    total += got
                }
                usleep(50_000)
                try? socket.sendAll(Array("done".utf8))
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, datapath: .skmsg, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                let writer = Thread { try? client.sendAll([UInt8](repeating: 7, count: 16 << 20), chunk: 65_536) }
                writer.start()
                var results: [Int] = []
                while results.count < 100 {
                    let got = receiveOnce(client)
                    results.append(got)
                    if got == 0 || (got < 0 && got != -Int(EAGAIN)) { break }
                }
                while !writer.isFinished { usleep(1000) }
                #expect(proxy.skmsgCounters?.endpoints_tracked == 2)
                #expect(results.suffix(2) == [4, 0], "the reply, then the end: \(results)")
                withKnownIssue("kernel tcp_bpf_recvmsg: write-space wake-ups make a blocking recv return EAGAIN", isIntermittent: true) {
                    #expect(!results.contains(-Int(EAGAIN)), "blocking recv results: \(results)")
                }
            }
        }
    }

    @Test("a copy listener's endpoints stay plain TCP sockets, even with an endpoints cgroup", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func copyListenerEndpointsUntracked() async throws {
        try await TestCgroup.with { cg in
            let upstream = try Self.upstream(in: cg, polledEchoHandler)
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, datapath: .copy, upstreams: [upstream.address])) { proxy, port in
                let client = try Self.client(port: port, in: cg)
                let message = Array("plain".utf8)
                try client.sendAll(message)
                #expect(try client.receive(exactly: message.count) == message)
                #expect(proxy.skmsgCounters?.endpoints_tracked == 0)
            }
        }
    }

    /// A tracked socket with bytes redirected into its receive queue cannot be read with splice
    /// (tcp_bpf has no `splice_read`), so splicing servers belong outside the endpoints cgroup;
    /// there, with the client inside and switching to egress, splice gets every byte.
    @Test("a splicing upstream outside the endpoints cgroup gets every byte", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func splicingUpstreamOutside() async throws {
        try await TestCgroup.with { cg in
            let upstream = try Self.upstream(in: nil, spliceEchoHandler)
            defer { upstream.stop() }
            try await ProxyHarness.with(Self.config(cg, upstreams: [upstream.address])) { proxy, port in
                // One byte, a pause for the relay to forward it (the client switches at its next send),
                // then the rest; polled reads, as a tracked socket's blocking recv may return EAGAIN.
                let client = try Self.client(port: port, in: cg, first: clientPattern.bytes(at: 0, count: 1))
                usleep(50_000)
                let writer = Thread {
                    try? clientPattern.forEachChunk(from: 1, count: (4 << 20) - 1, chunk: 65_536) { try client.sendAll($0) }
                    try? client.shutdownWrite()
                }
                writer.start()
                let result = try client.polledReceiveAndVerify(clientPattern)
                while !writer.isFinished { usleep(1000) }
                #expect(result.count == 4 << 20 && result.firstMismatch == nil, "echo: \(result.count) bytes, mismatch at \(result.firstMismatch ?? -1)")
                #expect(proxy.skmsgCounters?.endpoints_tracked == 1, "only the client is tracked")
                #expect((proxy.skmsgCounters?.redirected_bytes ?? 0) > 0, "the client's bytes took the egress redirect")
            }
        }
    }
}
