import CStraitSystem
import Foundation
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

/// Where a test's client and upstream sockets live: plain loopback, or (skmsg) inside a cgroup
/// that the proxy tracks, so the datapath under test really runs.
struct Endpoints: Sendable {
    let cgroup: TestCgroup?

    func upstream(_ handler: @escaping @Sendable (TestSocket) -> Void) throws -> ThreadedUpstream {
        guard let cgroup else { return try ThreadedUpstream(handler) }
        return try SkmsgTests.upstream(in: cgroup, handler)
    }

    func client(port: UInt16) throws -> TestSocket {
        guard let cgroup else { return try connectClient(port: port, timeoutSeconds: 30) }
        return try SkmsgTests.client(port: port, in: cgroup)
    }

    func config(_ datapath: Datapath, upstream: SocketAddress, maxInFlight: Int? = nil) -> ProxyConfig {
        var config = cgroup.map { SkmsgTests.config($0, datapath: datapath, upstreams: [upstream]) } ?? ProxyHarness.config(datapath: datapath, upstreams: [upstream])
        config.listeners[0].maxInFlight = maxInFlight
        return config
    }

    /// Runs `body` with endpoints for `datapath`: a fresh tracked cgroup for skmsg.
    static func with(_ datapath: Datapath, _ body: (Endpoints) async throws -> Void) async throws {
        if datapath == .skmsg {
            try await TestCgroup.with { cgroup in try await body(Endpoints(cgroup: cgroup)) }
        } else {
            try await body(Endpoints(cgroup: nil))
        }
    }
}

/// A one-shot gate a handler thread waits on (bounded).
final class Gate: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    func open() { semaphore.signal() }
    func wait(seconds: Int = 60) { _ = semaphore.wait(timeout: .now() + .seconds(seconds)) }
}

/// Waits up to `seconds` for `condition`.
func eventually(seconds: Double = 10, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while !condition() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
}

/// Hostile peers (StraitTestSupport's `HostilePeers`) against every datapath: slow and non-reading
/// upstreams, resets, early half-closes, trickling clients, idle hordes, and a full descriptor
/// table. Each asserts the bytes (exact, or a clean counted error), memory bounds, descriptors
/// back to the baseline, and that the proxy still serves.
@Suite("Hostile peers", .serialized)
struct HostilePeerTests {
    static let gate = Comment(rawValue: KernelTestGate.comment)

    // MARK: Item 1: no fixed deadline on a half-close that makes progress

    /// The issue's case: 16 MiB uploaded and half-closed, read at 1 MiB/s by an upstream with a
    /// 64 KiB receive buffer: about 16 s, of which some 12 MiB wait in the kernel (the proxy's
    /// send buffer takes at most 4 MiB here), longer than the 10 s after which sockmap used to reset
    /// the connection with bytes still in its backlog. Every byte must arrive, the client must see
    /// the upstream's FIN, and the access counters must say what reached the upstream.
    @Test("a half-closed upload to a slow upstream arrives whole and is counted as delivered", .enabled(if: KernelTestGate.enabled, gate))
    func slowUpstreamHalfClose() async throws {
        let size = 16 << 20
        // sockmap with a budget this upload never reaches (the kernel's half-close wait), and copy
        // for reference, at once. (A throttled sockmap direction can stall: README, limitations.)
        let cases: [(Datapath, Int)] = [(.sockmap, 64 << 20), (.copy, ListenerConfig.defaultMaxInFlight)]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (datapath, budget) in cases {
                group.addTask {
                    let log = TransferLog()
                    let upstream = try ThreadedUpstream { socket in
                        var small: CInt = 64 << 10
                        setsockopt(socket.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<CInt>.size))
                        if let result = try? HostilePeers.readSlowly(socket, pattern: clientPattern, bytesPerSecond: 1 << 20) { log.add(result) }
                        socket.close()
                    }
                    defer { upstream.stop() }
                    var config = ProxyHarness.config(datapath: datapath, upstreams: [upstream.address])
                    config.listeners[0].maxInFlight = budget
                    try await ProxyHarness.with(config) { proxy, port in
                        let client = try connectClient(port: port, timeoutSeconds: 60)
                        try client.send(clientPattern, count: size, chunk: 128 << 10)
                        try client.shutdownWrite()
                        var end = -Int(ETIMEDOUT)
                        for _ in 0..<9 where end == -Int(ETIMEDOUT) { end = client.polledReceiveOnce() }
                        #expect(end == 0, "\(datapath) budget \(budget): the client saw \(end), not the upstream's FIN")
                        try await eventually { proxy.activeConnections == 0 }
                        let seen = log.all
                        #expect(seen.count == 1 && seen.first?.count == size && seen.first?.mismatch == nil, "\(datapath) budget \(budget): upstream got \(seen)")
                        let counted = ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "direction=\"upstream\"")
                        #expect(counted == Double(size), "\(datapath) budget \(budget): counted \(counted) bytes up")
                        #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"upstream_reset\"") == 0)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    // MARK: Item 2: a peer that never reads

    /// The bound on what one connection may hold, from this machine's TCP settings: each socket's
    /// largest receive and send buffers on the path (the client's, the proxy's two, the
    /// upstream's), plus the in-flight budget and the copy buffer. What the client pushes before it
    /// stalls is in one of these places, so it is at most this.
    static func connectionBound(maxInFlight: Int) -> Int {
        func maximum(_ path: String) -> Int {
            Int((try? String(contentsOfFile: path, encoding: .utf8))?.split(whereSeparator: \.isWhitespace).last ?? "") ?? (32 << 20)
        }
        return 2 * (maximum("/proc/sys/net/ipv4/tcp_rmem") + maximum("/proc/sys/net/ipv4/tcp_wmem")) + maxInFlight + (1 << 20)  // copy: 1 MiB per direction
    }

    static let nonReadingTurns = 12

    /// 12 request/response turns (so `auto` moves to sockmap and skmsg reaches its ingress stage),
    /// then the upstream stops reading while the client pushes up to 256 MiB without blocking. The
    /// push must stall, bounded, with kernel memory bounded too; once the upstream reads, every
    /// pushed byte arrives exactly.
    func nonReadingUpstream(_ datapath: Datapath) async throws {
        try await Endpoints.with(datapath) { endpoints in
            let log = TransferLog()
            let gate = Gate()
            let upstream = try endpoints.upstream { socket in
                for _ in 0..<Self.nonReadingTurns {
                    guard let turn = try? socket.polledReceive(exactly: 64), turn.count == 64, (try? socket.sendAll(turn)) != nil else { return }
                }
                gate.wait()
                let verified = try? HostilePeers.readSlowly(socket, pattern: clientPattern, bytesPerSecond: 1 << 30, chunk: 256 << 10, stallLimit: .seconds(60))
                log.add(verified ?? (-1, nil))
                socket.close()
            }
            defer { upstream.stop() }
            try await ProxyHarness.with(endpoints.config(datapath, upstream: upstream.address, maxInFlight: ListenerConfig.defaultMaxInFlight)) { proxy, port in
                let client = try endpoints.client(port: port)
                for turn in 0..<Self.nonReadingTurns {
                    let message = upstreamPattern.bytes(at: turn * 64, count: 64)
                    try client.sendAll(message)
                    #expect(try client.polledReceive(exactly: 64) == message, "\(datapath): turn \(turn)")
                }
                let before = ResourceSnapshot.now()
                let pushed = try HostilePeers.pushUntilStalled(client, pattern: clientPattern, limit: 256 << 20, stall: .milliseconds(1500))
                let stalled = ResourceSnapshot.now()
                let bound = Self.connectionBound(maxInFlight: ListenerConfig.defaultMaxInFlight)
                let memoryTaken = before.memoryAvailable - stalled.memoryAvailable
                let skmsg = proxy.skmsgCounters.map { " skmsg: to ingress \($0.directions_to_ingress), back to egress \($0.directions_to_egress), to stack \($0.directions_to_stack), redirected \($0.redirected_bytes >> 20) MiB" } ?? ""
                print("non-reading upstream, \(datapath):\(skmsg) pushed \(pushed >> 20) MiB before stalling (bound \(bound >> 20) MiB); MemAvailable -\(memoryTaken >> 20) MiB, TCP memory +\((stalled.tcpMemory - before.tcpMemory) >> 20) MiB, RSS +\((stalled.resident - before.resident) >> 20) MiB")
                #expect(pushed < 256 << 20, "\(datapath): the client pushed everything: no back-pressure")
                #expect(pushed <= bound, "\(datapath): pushed \(pushed) > bound \(bound)")
                // Machine-wide and noisy (other builds run here): only a loose check. Unbounded, the
                // 256 MiB push alone would take about twice that in skbs.
                #expect(memoryTaken < 2 * bound, "\(datapath): MemAvailable fell by \(memoryTaken >> 20) MiB")
                if datapath == .sockmap || datapath == .auto {
                    #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"sockmap_throttled\"") >= 1, "\(datapath): the in-flight budget never throttled")
                }
                #expect(stalled.resident - before.resident < 64 << 20, "\(datapath): RSS grew by \((stalled.resident - before.resident) >> 20) MiB")
                HostilePeers.longestStall.withLock { $0 = .zero }
                gate.open()
                try client.shutdownWrite()
                try await eventually(seconds: 30) { !log.all.isEmpty }
                let seen = log.all
                print("  \(datapath): longest wait for a byte after the upstream began to read: \(HostilePeers.longestStall.withLock { $0 })")
                #expect(seen.first?.count == pushed && seen.first?.mismatch == nil, "\(datapath): pushed \(pushed), upstream got \(seen.map { "\($0.count) bytes, first mismatch \($0.mismatch ?? -1)" })")
                client.close()
                try await eventually { proxy.activeConnections == 0 }
            }
        }
    }

    @Test("a non-reading upstream: the sender is held back, memory bounded, every byte arrives later", arguments: ProxyHarness.userspaceDatapaths)
    func nonReadingUserspace(_ datapath: Datapath) async throws { try await nonReadingUpstream(datapath) }

    /// On sockmap and auto the budget throttles the push; the copy that takes over afterwards can
    /// stall (about one run in six here, not yet understood: README, limitations), so those two are
    /// a known intermittent issue until it is found. skmsg is held to the letter.
    @Test("a non-reading upstream, kernel datapaths", .enabled(if: KernelTestGate.enabled, gate), arguments: ProxyHarness.kernelDatapaths + [.skmsg])
    func nonReadingKernel(_ datapath: Datapath) async throws {
        if datapath == .skmsg { return try await nonReadingUpstream(datapath) }
        await withKnownIssue("a throttled sockmap direction's copy can stall", isIntermittent: true) {
            try await nonReadingUpstream(datapath)
        }
    }

    // MARK: The hostile mix

    /// At once, through one proxy: a normal 1 MiB echo, a client that resets mid-stream, one that
    /// half-closes early, one that trickles a byte per 100 ms, one that reads slowly, and 200 idle
    /// connections. Then: every well-behaved transfer exact, the reset counted, descriptors and
    /// connections back to the baseline, RSS bounded, and a new client served.
    func hostileMix(_ datapath: Datapath) async throws {
        try await Endpoints.with(datapath) { endpoints in
            let upstream = try endpoints.upstream(polledEchoHandler)
            defer { upstream.stop() }
            try await ProxyHarness.with(endpoints.config(datapath, upstream: upstream.address)) { proxy, port in
                let baseline = ResourceSnapshot.now()
                let horde = try HostilePeers.idleHorde(port: port, count: 200)
                let clients = try (0..<5).map { _ in try endpoints.client(port: port) }
                let results = TransferLog()
                try concurrently([
                    {
                        let writer = Thread { try? clients[0].send(clientPattern, count: 1 << 20, chunk: 64 << 10); try? clients[0].shutdownWrite() }
                        writer.start()
                        results.add(try clients[0].polledReceiveAndVerify(clientPattern))
                        while !writer.isFinished { usleep(1000) }
                    },
                    { try HostilePeers.resetAfter(clients[1], pattern: clientPattern, count: 256 << 10) },
                    { results.add(try HostilePeers.halfCloseEarly(clients[2], pattern: clientPattern, count: 64 << 10)) },
                    {
                        try HostilePeers.trickle(clients[3], bytes: clientPattern.bytes(at: 0, count: 16))
                        try clients[3].shutdownWrite()
                        results.add(try clients[3].polledReceiveAndVerify(clientPattern))
                    },
                    {
                        let writer = Thread { try? clients[4].send(clientPattern, count: 2 << 20, chunk: 64 << 10); try? clients[4].shutdownWrite() }
                        writer.start()
                        results.add(try HostilePeers.readSlowly(clients[4], pattern: clientPattern, bytesPerSecond: 4 << 20))
                        while !writer.isFinished { usleep(1000) }
                    },
                ])
                let counts = results.all.map(\.count).sorted()
                #expect(counts == [16, 64 << 10, 1 << 20, 2 << 20], "\(datapath): transfers \(results.all)")
                #expect(results.all.allSatisfy { $0.mismatch == nil }, "\(datapath): bytes differ: \(results.all)")
                for socket in horde + clients { socket.close() }
                try await eventually { proxy.activeConnections == 0 }
                #expect(proxy.activeConnections == 0, "\(datapath): \(proxy.activeConnections) connections left")
                // A reset before the upstream answered ends as client_gone.
                let resets = ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"client_reset\"") + ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"client_gone\"")
                #expect(resets >= 1, "\(datapath): the reset was not counted")
                try await eventually { ResourceSnapshot.now().descriptors <= baseline.descriptors }
                let after = ResourceSnapshot.now()
                #expect(after.descriptors <= baseline.descriptors, "\(datapath): \(after.descriptors) descriptors, \(baseline.descriptors) before")
                #expect(after.resident - baseline.resident < 64 << 20, "\(datapath): RSS grew by \((after.resident - baseline.resident) >> 20) MiB")
                let last = try endpoints.client(port: port)
                try last.sendAll(clientPattern.bytes(at: 0, count: 1000))
                #expect(try last.polledReceive(exactly: 1000) == clientPattern.bytes(at: 0, count: 1000), "\(datapath): not serving after the mix")
            }
        }
    }

    @Test("hostile mix: resets, early half-close, trickle, slow reader, 200 idle", arguments: ProxyHarness.userspaceDatapaths)
    func hostileMixUserspace(_ datapath: Datapath) async throws { try await hostileMix(datapath) }

    @Test("hostile mix, kernel datapaths", .enabled(if: KernelTestGate.enabled, gate), arguments: ProxyHarness.kernelDatapaths + [.skmsg])
    func hostileMixKernel(_ datapath: Datapath) async throws { try await hostileMix(datapath) }

    // MARK: Item 5: the /metrics server's header limit

    @Test("a 5 MiB request header to /metrics is closed at the limit and counted; nothing leaks")
    func metricsOversizedHeader() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
        config.metricsAddress = .ip(IPAddress("127.0.0.1")!, port: 0)
        try await ProxyHarness.with(config) { proxy, _ in
            let port = try #require(proxy.metricsAddress?.port)
            let baseline = ResourceSnapshot.now()
            for _ in 0..<3 { try HostilePeers.oversizedHeader(try connectClient(port: port), size: 5 << 20) }
            try await eventually { ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"metrics_request_too_large\"") >= 3 }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"metrics_request_too_large\"") == 3)
            try await eventually { ResourceSnapshot.now().descriptors <= baseline.descriptors }
            #expect(ResourceSnapshot.now().descriptors <= baseline.descriptors)
            let scrape = try connectClient(port: port)
            try scrape.sendAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let reply = String(decoding: try scrape.receiveToEnd(), as: UTF8.self)
            #expect(reply.hasPrefix("HTTP/1.1 200 OK"), "not serving /metrics after the oversized headers")
        }
    }

    // MARK: Item 8: out of descriptors

    /// A StraitNet echo server on loopback, on `group` (one loop is enough): the upstream of the
    /// descriptor tests, which must not spend descriptors on threads of its own.
    static func echoServer(on group: EventLoopGroup) throws -> Server {
        try Server(address: .ip(IPAddress("127.0.0.1")!, port: 0), group: group, handlers: ConnectionHandlers(onRequest: { connection in
            connection.writer.append(connection.reader)
            connection.flush()
        }))
    }

    /// The last line of defence behind the budget: the soft RLIMIT_NOFILE lowered (restored in
    /// defer) to the lowest free descriptor number after the proxy measured its budget, so the
    /// first call that needs a descriptor is the queued client's `accept`. It meets EMFILE, backs off and is
    /// counted; polled without suspending (a parked task lets libdispatch's worker monitor run,
    /// which traps when it cannot open /proc/PID/stat: README, reliability). With the limit back,
    /// the queued client is served byte-exact.
    @Test("out of descriptors behind the budget: accept backs off on EMFILE, is counted, and resumes")
    func acceptBacksOffOnEMFILE() async throws {
        let group = try EventLoopGroup(loopCount: 1)
        defer { group.shutdown() }
        let echo = try Self.echoServer(on: group)
        let message = clientPattern.bytes(at: 0, count: 1024)
        try await ProxyHarness.with(ProxyHarness.config(datapath: .copy, upstreams: [echo.address])) { proxy, port in
            let client = TestSocket(fd: try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false))
            let saved = try ResourceLimits.openFiles()
            do {
                defer { try? ResourceLimits.setOpenFiles(saved) }
                // The lowest free number (what the next descriptor would get): every number
                // below it is taken, so under it as the limit no call can get a descriptor.
                let lowestFree = try systemCall("dup") { dup(client.fd) }
                closeDescriptor(lowestFree)
                try ResourceLimits.setOpenFiles(.init(soft: UInt64(lowestFree), hard: saved.hard))
                try SocketCall.connect(client.fd, to: .loopback(port: port))
                let deadline = ContinuousClock.now + .seconds(5)
                while ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"accept_no_descriptors\"") == 0 && ContinuousClock.now < deadline { usleep(5_000) }
            }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"accept_no_descriptors\"") >= 1, "the back-off was not counted")
            client.setReceiveTimeout(seconds: 30)
            try client.sendAll(message)
            try client.shutdownWrite()
            let end = try client.polledReceiveAndVerify(clientPattern)
            #expect(end.count == 1024 && end.firstMismatch == nil, "the queued client was not served exactly: \(end)")
            client.close()
        }
        await echo.shutdown(gracePeriod: .milliseconds(100))
    }

    /// The soft RLIMIT_NOFILE lowered (restored in defer) to 160 above what is open before the
    /// proxy starts, so its descriptor budget holds a known number of splice relays (six
    /// descriptors each) under the 64-descriptor reserve; the client sockets are made before. Eight
    /// clients more than the budget: the first ones are relayed in accept-queue order, the proxy
    /// stops accepting at the budget (counted, shown in the status) without ever meeting
    /// EMFILE, the extra clients wait in the listen queue with nothing read, and once the first
    /// ones close every extra client is served byte-exact; the budget comes back to empty.
    @Test("out of descriptors: the budget stops accepting under RLIMIT_NOFILE, extra clients queue and are served")
    func descriptorBudget() async throws {
        let group = try EventLoopGroup(loopCount: 1)
        defer { group.shutdown() }
        let echo = try Self.echoServer(on: group)
        let sockets = try (0..<64).map { _ in TestSocket(fd: try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue), nonBlocking: false)) }
        defer { for socket in sockets { socket.close() } }
        _ = ProxyHarness.descriptorHeadroom  // its one-time raise must not undo the lowering below
        let saved = try ResourceLimits.openFiles()
        try ResourceLimits.setOpenFiles(.init(soft: UInt64(ResourceSnapshot.now().descriptors + 160), hard: saved.hard))
        defer { try? ResourceLimits.setOpenFiles(saved) }
        let message = clientPattern.bytes(at: 0, count: 1024)
        try await ProxyHarness.with(ProxyHarness.config(datapath: .splice, upstreams: [echo.address])) { proxy, port in
            let budget = try #require(proxy.status().descriptors, "no descriptor budget in the status")
            #expect(budget.reserve == 64 && budget.held == 0 && !budget.full)
            let perRelay = 6  // a splice relay: client, upstream and two pipes
            let admitted = budget.capacity / perRelay
            try #require(admitted >= 2 && admitted + 8 <= sockets.count, "capacity \(budget.capacity)")
            let clients = Array(sockets.prefix(admitted + 8))
            for client in clients {
                try SocketCall.connect(client.fd, to: .loopback(port: port))
                client.setReceiveTimeout(seconds: 30)
                try client.sendAll(message)
            }
            for client in clients.prefix(admitted) {
                #expect(try client.polledReceive(exactly: 1024) == message, "an admitted client was not relayed")
            }
            try await eventually { ProxyHarness.metric(proxy, "strait_proxy_descriptor_budget_reached_total") >= 1 }
            // At least once: with two loops, one loop's accept that finds the queue emptied by the
            // other gives its descriptors back and wakes the paused one, which pauses anew.
            #expect(ProxyHarness.metric(proxy, "strait_proxy_descriptor_budget_reached_total") >= 1)
            let full = try #require(proxy.status().descriptors)
            #expect(full.full && full.held == admitted * perRelay, "status: \(full)")
            #expect(proxy.activeConnections == admitted)
            for client in clients.dropFirst(admitted) {
                var byte: UInt8 = 0
                #expect(recv(client.fd, &byte, 1, CInt(MSG_DONTWAIT)) == -1 && errno == EAGAIN, "a queued client got bytes before it was accepted")
            }
            for client in clients.prefix(admitted) { client.close() }
            for client in clients.dropFirst(admitted) {
                try client.shutdownWrite()
                let end = try client.polledReceiveAndVerify(clientPattern)
                #expect(end.count == 1024 && end.firstMismatch == nil, "a queued client was not served exactly: \(end)")
            }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"accept_no_descriptors\"") == 0, "the budget let accept meet EMFILE")
            for client in clients { client.close() }
            try await eventually { proxy.status().descriptors?.held == 0 }
            #expect(proxy.status().descriptors?.held == 0 && proxy.activeConnections == 0)
            let after = try connectClient(port: port, timeoutSeconds: 10)
            try after.sendAll(message)
            #expect(try after.polledReceive(exactly: 1024) == message, "not serving after the budget emptied")
        }
        await echo.shutdown(gracePeriod: .milliseconds(100))
    }
}
