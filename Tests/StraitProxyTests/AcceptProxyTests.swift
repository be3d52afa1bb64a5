import Foundation
import StraitNet
@testable import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `accept_proxy: v2`: listeners behind another balancer take the PROXY header off each client,
/// never forward it, and use its source as the client's address.
@Suite("PROXY protocol v2 accepted on listeners (accept_proxy: v2)")
struct AcceptProxyTests {
    /// What a balancer in front says: a client at 198.18.0.7:4242 reached 198.18.0.9:443.
    static let balancedClient = SocketAddress.ip(IPAddress("198.18.0.7")!, port: 4242)
    static let balancedTarget = SocketAddress.ip(IPAddress("198.18.0.9")!, port: 443)
    static var inbound: [UInt8] { ProxyHeaderV2.tcp(client: balancedClient, destination: balancedTarget).encode() }

    static func config(datapath: Datapath, upstream: SocketAddress, connectTimeout: Duration = .seconds(5)) -> ProxyConfig {
        var config = ProxyHarness.config(datapath: datapath, upstreams: [upstream], connectTimeout: connectTimeout)
        config.listeners[0].acceptProxy = .v2
        return config
    }

    /// Reads until end of stream (or a failure): every byte the peer sent. Polled reads, since
    /// a tracked skmsg endpoint's blocking read can return EAGAIN (``TestSocket/polledReceive(into:)``).
    static func receiveToEnd(_ socket: TestSocket) -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let got = buffer.withUnsafeMutableBytes { socket.polledReceive(into: $0) }
            if got <= 0 { return received }
            received += buffer[0..<got]
        }
    }

    /// The first index where `a` and `b` differ (or where the shorter ends), nil when equal.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        if let index = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) { return index }
        return a.count == b.count ? nil : min(a.count, b.count)
    }

    /// One client through an `accept_proxy` listener whose cluster sends `send_proxy: v2`: the
    /// header and the first payload bytes go in one write; the upstream must see its own header
    /// carrying the inbound header's addresses, then exactly the payload, which it echoes.
    static func relay(datapath: Datapath) async throws {
        let (upstream, received) = try ReceivedHeader.echoingUpstream()
        defer { upstream.stop() }
        var config = config(datapath: datapath, upstream: upstream.address)
        config.clusters[0].sendProxy = .v2
        var random = SeededRandom(seed: 0x16_0001)
        let payload = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }
        try await ProxyHarness.with(config) { proxy, port in
            let client = try connectClient(port: port)
            defer { client.close() }
            try client.sendAll(Self.inbound + payload[0..<1000])
            let writer = Thread {
                try? client.sendAll(Array(payload[1000...]), chunk: 16 << 10)
                try? client.shutdownWrite()
            }
            writer.start()
            let echoed = Self.receiveToEnd(client)
            while !writer.isFinished { usleep(1000) }
            #expect(echoed.count == payload.count, "\(datapath): \(echoed.count) of \(payload.count) bytes came back")
            let difference = Self.firstDifference(echoed, payload)
            #expect(difference == nil, "\(datapath): the payload, byte for byte, without the inbound header")
            let expected = ProxyHeaderV2.tcp(client: Self.balancedClient, destination: Self.balancedTarget).encode()
            #expect(received.bytes == expected, "\(datapath): the upstream's header carries the balancer's addresses: \(received.bytes)")
            #expect(upstream.connections == 1)
            #expect(ProxyHarness.metric(proxy, "strait_proxy_proxy_header_rejected_total") == 0)
        }
    }

    @Test("the header is taken off, never forwarded; the payload is byte-exact", arguments: ProxyHarness.userspaceDatapaths)
    func userspace(datapath: Datapath) async throws { try await Self.relay(datapath: datapath) }

    @Test("kernel datapaths: the header is read before the sockets join the map", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)), arguments: ProxyHarness.kernelDatapaths)
    func kernel(datapath: Datapath) async throws { try await Self.relay(datapath: datapath) }

    @Test("skmsg: the header is read before the routes are armed", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func skmsg() async throws {
        try await TestCgroup.with { cg in
            let upstream = try SkmsgTests.upstream(in: cg) { socket in
                _ = try? socket.receive(exactly: 28)
                echoHandler(socket)
            }
            defer { upstream.stop() }
            var config = SkmsgTests.config(cg, upstreams: [upstream.address])
            config.listeners[0].acceptProxy = .v2
            config.clusters[0].sendProxy = .v2
            // Small enough for the socket buffers: sent whole with the header, before any echo is read.
            let payload = clientPattern.bytes(at: 0, count: 64 << 10)
            try await ProxyHarness.with(config) { _, port in
                let client = try SkmsgTests.client(port: port, in: cg, first: Self.inbound + payload)
                defer { client.close() }
                try client.shutdownWrite()
                let echoed = Self.receiveToEnd(client)
                let difference = Self.firstDifference(echoed, payload)
                #expect(difference == nil, "skmsg: \(echoed.count) of \(payload.count) bytes, byte for byte")
            }
        }
    }

    @Test("malformed, truncated, oversized and late headers close that client alone, counted by reason")
    func rejected() async throws {
        let upstream = try ThreadedUpstream(echoHandler)
        defer { upstream.stop() }
        let config = Self.config(datapath: .copy, upstream: upstream.address, connectTimeout: .milliseconds(300))
        try await ProxyHarness.with(config) { proxy, port in
            // Each reason's series exists at 0 before the first rejection (no gap on a dashboard).
            let series = proxy.metrics.exposition().split(separator: "\n").filter { $0.hasPrefix("strait_proxy_proxy_header_rejected_total{") }
            #expect(series.count == 4 && series.allSatisfy { $0.hasSuffix(" 0") }, "\(series)")
            // A good connection, relaying all along.
            let good = try connectClient(port: port)
            defer { good.close() }
            try good.sendAll(Self.inbound + [1, 2, 3])
            #expect(try good.receive(exactly: 3) == [1, 2, 3])

            var oversized = Self.inbound
            oversized[14] = 0x20  // length 8192 + 16: above ProxyHeaderReader.maximumLength
            oversized[15] = 0x00
            let cases: [(bytes: [UInt8], closeAfter: Bool, reason: String)] = [
                (Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), false, "malformed"),
                (Array(Self.inbound[0..<12]) + [0x21, 0x11, 0x00, 0x0B] + [UInt8](repeating: 0, count: 11), false, "malformed"),
                (Array(Self.inbound[0..<20]), true, "truncated"),
                (oversized, false, "oversized"),
                (Array(Self.inbound[0..<10]), false, "timeout"),
            ]
            for (index, bad) in cases.enumerated() {
                let client = try connectClient(port: port, timeoutSeconds: 10)
                try client.sendAll(bad.bytes)
                if bad.closeAfter { try client.shutdownWrite() }
                #expect(receiveOnce(client) <= 0, "case \(index) (\(bad.reason)): the client is closed, nothing relayed")
                client.close()
                let message = Array("still here \(index)".utf8)
                try good.sendAll(message)
                #expect(try good.receive(exactly: message.count) == message, "the good connection is unaffected by case \(index)")
            }
            for reason in ["malformed", "truncated", "oversized", "timeout"] {
                let expected = Double(cases.filter { $0.reason == reason }.count)
                #expect(ProxyHarness.metric(proxy, "strait_proxy_proxy_header_rejected_total", "reason=\"\(reason)\"") == expected, "\(reason)")
            }
            #expect(proxy.metrics.exposition().contains("# HELP strait_proxy_proxy_header_rejected_total "))
            #expect(upstream.connections == 1, "no upstream was dialled for a rejected client")
        }
    }

    @Test("the header's source is the client in the access log; a LOCAL header relays with the real peer")
    func accessLog() async throws {
        try await withTestFolder { folder in
            let upstream = try ThreadedUpstream(echoHandler)
            defer { upstream.stop() }
            var config = Self.config(datapath: .copy, upstream: upstream.address)
            config.accessLogFile = folder + "/access.jsonl"
            var localPort: UInt16 = 0
            try await ProxyHarness.with(config) { proxy, port in
                let proxied = try connectClient(port: port)
                try proxied.sendAll(Self.inbound + Array("hello".utf8))
                #expect(try proxied.receive(exactly: 5) == Array("hello".utf8))
                proxied.close()
                // LOCAL (a balancer's health check): accepted, the connection's own addresses used.
                let local = try connectClient(port: port)
                localPort = local.localPort
                try local.sendAll(ProxyHeaderV2(command: .local, transport: 0, addresses: .unspecified).encode() + [9])
                #expect(try local.receive(exactly: 1) == [9])
                local.close()
                for _ in 0..<200 where proxy.activeConnections > 0 { try await Task.sleep(for: .milliseconds(10)) }
            }
            let lines = try String(contentsOfFile: folder + "/access.jsonl", encoding: .utf8).split(separator: "\n")
            let clients = try lines.map { line in try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])["client"] as? String }
            #expect(Set(clients.compactMap { $0 }) == ["198.18.0.7:4242", "127.0.0.1:\(localPort)"], "\(lines)")
        }
    }

    @Test("accept_proxy is read from the file; another value is an error at its position")
    func configKey() throws {
        let yaml = "listeners:\n  - name: web\n    bind: 127.0.0.1:6000\n    cluster: b\n    accept_proxy: v2\nclusters:\n  - name: b\n    upstreams: [127.0.0.1:5000]\n"
        #expect(try ProxyConfigLoader.parse(bytes: Array(yaml.utf8), file: "good.yaml").listeners[0].acceptProxy == .v2)
        #expect(try ProxyConfigLoader.parse(bytes: Array(yaml.replacingOccurrences(of: "    accept_proxy: v2\n", with: "").utf8), file: "good.yaml").listeners[0].acceptProxy == nil)
        do {
            _ = try ProxyConfigLoader.parse(bytes: Array(yaml.replacingOccurrences(of: "accept_proxy: v2", with: "accept_proxy: v1").utf8), file: "bad.yaml")
            Issue.record("accept_proxy: v1 was accepted")
        } catch {
            #expect(error.description.hasPrefix("bad.yaml:5:19: "), "\(error)")
            #expect(error.message.contains("`accept_proxy` as one of v2"), "\(error)")
        }
    }
}
