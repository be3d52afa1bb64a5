import Foundation
import StraitNet
@testable import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

/// Upstream that sends its name on connect, then echoes.
func namedUpstream(_ name: String, port: UInt16 = 0) throws -> ThreadedUpstream {
    try ThreadedUpstream(port: port) { socket in
        try? socket.sendAll(Array("\(name)\n".utf8))
        echoHandler(socket)
    }
}

/// Connects through the proxy and reads the upstream's name line (nil if the proxy closed).
func whoAnswers(port: UInt16) throws -> String? {
    let client = try connectClient(port: port, timeoutSeconds: 5)
    var name: [UInt8] = []
    while let byte = try client.receive(exactly: 1).first, byte != UInt8(ascii: "\n") { name.append(byte) }
    return name.isEmpty ? nil : String(decoding: name, as: UTF8.self)
}

/// A port nothing listens on (bound then closed).
func closedPort() throws -> UInt16 {
    let listener = try TestListener(.ipv4)
    let port = listener.port
    listener.socket.close()
    return port
}

@Suite("Clusters, health checks, limits and reload")
struct ClusterTests {
    @Test("an upstream that refuses closes the client promptly and is counted")
    func upstreamRefuses() async throws {
        _ = ProxyHarness.descriptorHeadroom
        let dead = SocketAddress.ip(IPAddress("127.0.0.1")!, port: try closedPort())
        try await ProxyHarness.with(ProxyHarness.config(datapath: .copy, upstreams: [dead])) { proxy, port in
            let started = ContinuousClock.now
            let client = try connectClient(port: port, timeoutSeconds: 5)
            #expect(receiveOnce(client) == 0)
            #expect(ContinuousClock.now - started < .milliseconds(500))
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_errors_total", "connect_failed") < 1 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"connect_failed\"") == 1)
        }
    }

    @Test("an upstream that never answers the SYN times out and is counted")
    func upstreamTimesOut() async throws {
        _ = ProxyHarness.descriptorHeadroom
        // A listener with a full backlog and no accept: further SYNs are dropped, so connect hangs.
        let stuck = try TestListener(.ipv4)
        _ = listen(stuck.socket.fd, 0)
        var fillers: [CInt] = []
        defer { for fd in fillers { close(fd) } }
        for _ in 0..<4 {
            let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            address.sin_port = stuck.port.bigEndian
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fillers.append(fd)
        }
        try await Task.sleep(for: .milliseconds(100))
        let config = ProxyHarness.config(datapath: .splice, upstreams: [.ip(IPAddress("127.0.0.1")!, port: stuck.port)], connectTimeout: .milliseconds(300))
        try await ProxyHarness.with(config) { proxy, port in
            let started = ContinuousClock.now
            let client = try connectClient(port: port, timeoutSeconds: 5)
            #expect(receiveOnce(client) == 0)
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(250) && waited < .seconds(2), "closed after \(waited)")
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_errors_total", "connect_timeout") < 1 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"connect_timeout\"") == 1)
        }
    }

    @Test("an upstream that goes down is skipped, and used again when it comes back")
    func healthChecks() async throws {
        _ = ProxyHarness.descriptorHeadroom
        var first: ThreadedUpstream? = try namedUpstream("A")
        let firstPort = first!.port
        let second = try namedUpstream("B")
        defer { second.stop() }
        let health = HealthCheck(interval: .milliseconds(50), timeout: .milliseconds(40), rise: 2, fall: 2)
        let config = ProxyHarness.config(datapath: .copy, upstreams: [first!.address, second.address], health: health)
        try await ProxyHarness.with(config) { proxy, port in
            var seen = Set<String>()
            for _ in 0..<4 { if let name = try whoAnswers(port: port) { seen.insert(name) } }
            #expect(seen == ["A", "B"], "round robin over both")

            first?.stop()
            first = nil
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_upstream_up", "127.0.0.1:\(firstPort)") != 0 {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_upstream_up", "127.0.0.1:\(firstPort)") == 0, "A marked down")
            for _ in 0..<6 { #expect(try whoAnswers(port: port) == "B") }

            let back = try namedUpstream("A", port: firstPort)
            defer { back.stop() }
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_upstream_up", "127.0.0.1:\(firstPort)") != 1 {
                try await Task.sleep(for: .milliseconds(20))
            }
            var again = Set<String>()
            for _ in 0..<4 { if let name = try whoAnswers(port: port) { again.insert(name) } }
            #expect(again == ["A", "B"], "A back in rotation")
        }
    }

    @Test("1,000 concurrent connections, each echoed")
    func thousandConnections() async throws {
        _ = ProxyHarness.descriptorHeadroom
        let group = try EventLoopGroup(loopCount: 1)
        defer { group.shutdown() }
        // The upstream is a StraitNet echo server: one epoll loop, not a thread per connection.
        let server = try Server(address: .loopback(port: 0), group: group, handlers: ConnectionHandlers(onRequest: { connection in
            connection.writer.append(try connection.reader.slice(connection.reader.readableBytes))
            connection.flush()
        }))
        for datapath in [Datapath.copy, .splice] + (KernelTestGate.missing == nil ? [Datapath.sockmap] : []) {
            try await ProxyHarness.with(ProxyHarness.config(datapath: datapath, upstreams: [server.address])) { proxy, port in
                var clients: [TestSocket] = []
                for _ in 0..<1000 { clients.append(try connectClient(port: port, timeoutSeconds: 10)) }
                for (index, client) in clients.enumerated() { try client.sendAll(Array("connection \(index) of 1000".utf8)) }
                var echoed = 0
                for (index, client) in clients.enumerated() {
                    let expected = Array("connection \(index) of 1000".utf8)
                    if try client.receive(exactly: expected.count) == expected { echoed += 1 }
                }
                #expect(echoed == 1000, "\(datapath)")
                #expect(proxy.activeConnections == 1000, "\(datapath)")
                for client in clients { client.close() }
                for _ in 0..<300 where proxy.activeConnections > 0 { try await Task.sleep(for: .milliseconds(10)) }
                #expect(proxy.activeConnections == 0, "\(datapath): every relay finished")
            }
        }
        await server.shutdown(gracePeriod: .milliseconds(100))
    }

    @Test("at max_connections a client waits in the listen queue, unharmed, and is served once a connection ends")
    func connectionLimit() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
        config.listeners[0].maxConnections = 2
        try await ProxyHarness.with(config) { proxy, port in
            let open = try (0..<2).map { _ in try connectClient(port: port) }
            for client in open { try client.sendAll([1]); #expect(try client.receive(exactly: 1) == [1]) }
            // The handshake completes in the kernel's backlog: connect returns, bytes can be sent.
            let queued = try connectClient(port: port, timeoutSeconds: 1)
            defer { queued.close() }
            let message = Array("queued, not refused".utf8)
            try queued.sendAll(message)
            var readable = pollfd(fd: queued.fd, events: Int16(POLLIN), revents: 0)
            #expect(poll(&readable, 1, 300) == 0, "no data, end of stream or reset while queued (revents \(readable.revents))")
            #expect(upstream.connections == 2, "the queued client reached no upstream")
            for _ in 0..<500 where proxy.status().listeners.first?.atLimit != true { try await Task.sleep(for: .milliseconds(10)) }
            let listener = try #require(proxy.status().listeners.first)
            #expect(listener.atLimit && listener.active == 2 && listener.maxConnections == 2, "\(listener)")
            #expect(ProxyHarness.metric(proxy, "strait_proxy_listener_limit_reached_total", "listener=\"test\"") >= 1)
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total") == 0, "nothing refused")
            open[0].close()
            queued.setReceiveTimeout(seconds: 10)
            #expect(try queued.receive(exactly: message.count) == message, "served byte-exact once a slot freed")
            try open[1].sendAll([2])
            #expect(try open[1].receive(exactly: 1) == [2])
            open[1].close()
        }
    }

    @Test("a reload that raises max_connections serves a client already queued")
    func connectionLimitRaised() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
        config.listeners[0].maxConnections = 1
        try await ProxyHarness.with(config) { proxy, port in
            let first = try connectClient(port: port)
            defer { first.close() }
            try first.sendAll([1])
            #expect(try first.receive(exactly: 1) == [1])
            let queued = try connectClient(port: port, timeoutSeconds: 10)
            defer { queued.close() }
            try queued.sendAll([2])
            for _ in 0..<500 where proxy.status().listeners.first?.atLimit != true { try await Task.sleep(for: .milliseconds(10)) }
            #expect(proxy.status().listeners.first?.atLimit == true)
            var raised = config
            raised.listeners[0].address = .ip(IPAddress("127.0.0.1")!, port: port)
            raised.listeners[0].maxConnections = 2
            try proxy.reload(raised)
            #expect(try queued.receive(exactly: 1) == [2], "served with the first connection still open")
            #expect(proxy.activeConnections == 2)
        }
    }

    @Test("reload with connections open drops none and routes new ones by the new config")
    func reload() async throws {
        let oldUpstream = try namedUpstream("old")
        let newUpstream = try namedUpstream("new")
        defer { oldUpstream.stop(); newUpstream.stop() }
        for datapath in [Datapath.splice] + (KernelTestGate.missing == nil ? [Datapath.sockmap] : []) {
            let config = ProxyHarness.config(datapath: datapath, upstreams: [oldUpstream.address])
            try await ProxyHarness.with(config) { proxy, port in
                var open: [TestSocket] = []
                for _ in 0..<20 {
                    let client = try connectClient(port: port)
                    #expect(try client.receive(exactly: 4) == Array("old\n".utf8))
                    open.append(client)
                }
                var next = config
                let bound = SocketAddress.ip(IPAddress("127.0.0.1")!, port: port)
                next.listeners[0].address = bound
                next.clusters[0].upstreams = [UpstreamConfig(address: newUpstream.address)]
                try proxy.reload(next)
                #expect(try whoAnswers(port: port) == "new")
                for (index, client) in open.enumerated() {
                    let message = Array("still here \(index)".utf8)
                    try client.sendAll(message)
                    #expect(try client.receive(exactly: message.count) == message, "\(datapath): connection \(index) survived the reload")
                }
                #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total") == 0)
            }
        }
    }

    /// Nothing sent either way for `idle_timeout`: the proxy closes both sides and counts it. On
    /// sockmap the proxy cannot see bytes and reads the kernel's per-pair counters instead.
    @Test("idle connections are closed at the idle timeout", arguments: [Datapath.copy, .splice] + (KernelTestGate.missing == nil ? [Datapath.sockmap] : []))
    func idleTimeout(datapath: Datapath) async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: datapath, upstreams: [upstream.address])
        config.listeners[0].idleTimeout = .milliseconds(300)
        try await ProxyHarness.with(config) { proxy, port in
            let client = try connectClient(port: port, timeoutSeconds: 5)
            try client.sendAll([42])
            #expect(try client.receive(exactly: 1) == [42])
            let started = ContinuousClock.now
            #expect(receiveOnce(client) == 0, "\(datapath): closed by the proxy")
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(150) && waited < .seconds(3), "\(datapath): closed after \(waited)")
            for _ in 0..<100 where ProxyHarness.metric(proxy, "strait_proxy_errors_total", "idle_timeout") < 1 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(ProxyHarness.metric(proxy, "strait_proxy_errors_total", "kind=\"idle_timeout\"") == 1)
        }
    }

    @Test("SIGTERM-style drain waits for open connections, then closes them at the deadline")
    func drain() async throws {
        _ = ProxyHarness.descriptorHeadroom
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let proxy = try Proxy(config: ProxyHarness.config(datapath: .copy, upstreams: [upstream.address]), logger: ProxyHarness.logger)
        let port = proxy.listenerAddresses.values.first!.port!
        let client = try connectClient(port: port)
        try client.sendAll([7])
        #expect(try client.receive(exactly: 1) == [7])
        let started = ContinuousClock.now
        await proxy.shutdown(drainTimeout: .milliseconds(300))
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(250), "waited for the open connection")
        #expect(receiveOnce(client) == 0, "closed at the deadline")
        #expect(throws: (any Error).self) { try connectClient(port: port) }
    }
}

@Suite("Running without BPF, and the metrics endpoint")
struct OperationTests {
    @Test("without the kernel datapath, a sockmap listener runs on splice and says why")
    func withoutKernelDatapath() async throws {
        _ = ProxyHarness.descriptorHeadroom
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let proxy = try Proxy(config: ProxyHarness.config(datapath: .sockmap, upstreams: [upstream.address]), kernelDatapath: false, logger: ProxyHarness.logger)
        #expect(proxy.sockmapUnavailable != nil)
        let client = try connectClient(port: proxy.listenerAddresses.values.first!.port!)
        try client.sendAll(Array("spliced".utf8))
        #expect(try client.receive(exactly: 7) == Array("spliced".utf8))
        client.close()
        for _ in 0..<200 where proxy.activeConnections > 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(ProxyHarness.metric(proxy, "strait_proxy_bytes_total", "datapath=\"splice\"") == 14)
        await proxy.shutdown(drainTimeout: .zero)
    }

    @Test("GET /metrics serves the Prometheus text")
    func metricsEndpoint() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: .copy, upstreams: [upstream.address])
        config.metricsAddress = .ip(IPAddress("127.0.0.1")!, port: 0)
        try await ProxyHarness.with(config) { proxy, port in
            let client = try connectClient(port: port)
            try client.sendAll([1, 2, 3])
            _ = try client.receive(exactly: 3)
            let scrape = try connectClient(port: try #require(proxy.metricsAddress?.port))
            try scrape.sendAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let text = String(decoding: try scrape.receiveToEnd(), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 200 OK"))
            #expect(text.contains("strait_proxy_connections_total{listener=\"test\"} 1"))
            #expect(text.contains("strait_proxy_connections_active{listener=\"test\"} 1"))
            if proxy.sockmapUnavailable == nil { #expect(text.contains("strait_proxy_sockmap_drops_total{reason=\"unpaired\"} 0")) }
        }
    }
}

@Suite("Balancing")
struct BalancerTests {
    func addresses(_ count: Int) -> [SocketAddress] {
        (0..<count).map { .ip(IPAddress("198.18.0.\($0 + 1)")!, port: 80) }
    }

    @Test("consistent hashing moves only the clients of the upstream that left")
    func consistentHashRemapping() {
        let members = addresses(5)
        let before = BalancerProbe(kind: .consistentHash, members: members)
        let clients = (0..<2000).map { SocketAddress.ip(IPAddress("198.19.\($0 / 250).\($0 % 250)")!, port: 40000) }
        let assignment = clients.map { before.pick($0)! }
        before.setHealthy(members[2], false)
        var moved = 0
        for (client, previous) in zip(clients, assignment) {
            let now = before.pick(client)!
            if previous == members[2] {
                #expect(now != members[2])
            } else if now != previous {
                moved += 1
            }
        }
        #expect(moved == 0, "clients of healthy upstreams stayed put")
        let share = assignment.filter { $0 == members[2] }.count
        #expect(share > 200 && share < 700, "one of five upstreams got \(share) of 2000 clients")
    }

    @Test("least connections picks the upstream with the fewest active connections per weight")
    func leastConnections() {
        let members = addresses(3)
        let probe = BalancerProbe(kind: .leastConnections, members: members, weights: [1, 2, 1])
        probe.states[0].active.store(3, ordering: .relaxed)
        probe.states[1].active.store(4, ordering: .relaxed)  // 2 per unit of weight
        probe.states[2].active.store(5, ordering: .relaxed)
        #expect(probe.pick(nil) == members[1])
        probe.setHealthy(members[1], false)
        #expect(probe.pick(nil) == members[0])
    }

    @Test("weighted round robin follows the weights")
    func weightedRoundRobin() {
        let members = addresses(2)
        let probe = BalancerProbe(kind: .roundRobin, members: members, weights: [3, 1])
        let picks = (0..<400).map { _ in probe.pick(nil)! }
        #expect(picks.filter { $0 == members[0] }.count == 300)
    }
}

/// The balancer with its upstream states, driven directly.
struct BalancerProbe {
    let balancer: Balancer
    let states: [UpstreamState]

    init(kind: Balancing, members: [SocketAddress], weights: [Int]? = nil) {
        states = members.map { UpstreamState(address: $0) }
        balancer = Balancer(kind: kind, members: states, weights: weights ?? members.map { _ in 1 })
    }

    func pick(_ client: SocketAddress?) -> SocketAddress? { balancer.pick(clientAddress: client)?.address }

    func setHealthy(_ address: SocketAddress, _ healthy: Bool) {
        states.first { $0.address == address }?.healthy.store(healthy, ordering: .relaxed)
    }
}
