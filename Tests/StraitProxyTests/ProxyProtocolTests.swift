import Foundation
import StraitNet
@testable import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

@Suite("PROXY protocol v2: byte for byte, strict")
struct ProxyProtocolTests {
    let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    @Test("an IPv4 TCP header is the spec's bytes, and decodes back")
    func ipv4() throws {
        let header = ProxyHeaderV2.tcp(client: SocketAddress(parsing: "198.18.0.1:40000")!, destination: SocketAddress(parsing: "198.18.0.2:443")!)
        let expected = signature + [0x21, 0x11, 0x00, 0x0C, 0xC6, 0x12, 0x00, 0x01, 0xC6, 0x12, 0x00, 0x02, 0x9C, 0x40, 0x01, 0xBB]
        #expect(header.encode() == expected)
        #expect(try ProxyHeaderV2.decode(expected + Array("GET /".utf8)) == .header(header, length: 28))
    }

    @Test("an IPv6 TCP header, and a mixed pair sent as IPv6 with the IPv4 side mapped")
    func ipv6() throws {
        let header = ProxyHeaderV2.tcp(client: SocketAddress(parsing: "[2001:db8::1]:1234")!, destination: SocketAddress(parsing: "[2001:db8::2]:80")!)
        let bytes = header.encode()
        #expect(bytes.count == 52)
        #expect(Array(bytes[12..<16]) == [0x21, 0x21, 0x00, 0x24])
        #expect(Array(bytes[16..<32]) == IPAddress("2001:db8::1")!.bytes)
        #expect(Array(bytes[32..<48]) == IPAddress("2001:db8::2")!.bytes)
        #expect(Array(bytes[48..<52]) == [0x04, 0xD2, 0x00, 0x50])
        #expect(try ProxyHeaderV2.decode(bytes) == .header(header, length: 52))
        let mixed = ProxyHeaderV2.tcp(client: SocketAddress(parsing: "198.18.0.1:5")!, destination: SocketAddress(parsing: "[2001:db8::2]:80")!).encode()
        #expect(mixed[13] == 0x21 && Array(mixed[16..<32]) == IPAddress("198.18.0.1")!.ipv6Mapped)
    }

    @Test("LOCAL with no addresses; TLVs in order; CRC-32C checked")
    func localAndTLVs() throws {
        let local = signature + [0x20, 0x00, 0x00, 0x00]
        #expect(try ProxyHeaderV2.decode(local) == .header(ProxyHeaderV2(command: .local, transport: 0, addresses: .unspecified), length: 16))
        // The standard check value of CRC-32C.
        #expect(ProxyHeaderV2.crc32c(Array("123456789".utf8)) == 0xE306_9283)
        var header = ProxyHeaderV2.tcp(client: SocketAddress(parsing: "198.18.0.1:1")!, destination: SocketAddress(parsing: "198.18.0.2:2")!)
        header.tlvs = [(0x01, Array("h2".utf8)), (ProxyHeaderV2.crc32cType, [0, 0, 0, 0])]
        var bytes = header.encode()
        let crc = ProxyHeaderV2.crc32c(bytes)
        let crcBytes: [UInt8] = [UInt8(truncatingIfNeeded: crc >> 24), UInt8(truncatingIfNeeded: crc >> 16), UInt8(truncatingIfNeeded: crc >> 8), UInt8(truncatingIfNeeded: crc)]
        bytes.replaceSubrange(bytes.count - 4..<bytes.count, with: crcBytes)
        guard case .header(let decoded, let length) = try ProxyHeaderV2.decode(bytes) else { Issue.record("incomplete"); return }
        #expect(length == bytes.count && decoded.tlvs.map(\.type) == [0x01, 0x03] && decoded.tlvs[0].value == Array("h2".utf8))
        bytes[20] ^= 1  // a changed address: the checksum no longer matches
        #expect(throws: ProxyHeaderV2.DecodeError.checksum) { try ProxyHeaderV2.decode(bytes) }
    }

    @Test("incomplete headers ask for the bytes they need")
    func incomplete() throws {
        let full = ProxyHeaderV2.tcp(client: SocketAddress(parsing: "198.18.0.1:1")!, destination: SocketAddress(parsing: "198.18.0.2:2")!).encode()
        #expect(try ProxyHeaderV2.decode(full.prefix(5)) == .incomplete(needed: 16))
        #expect(try ProxyHeaderV2.decode(full.prefix(20)) == .incomplete(needed: 28))
        #expect(try ProxyHeaderV2.decode([]) == .incomplete(needed: 16))
    }

    @Test("malformed headers are refused with the reason", arguments: [
        (Array("GET / HTTP/1.1\r\n\r\n".utf8), ProxyHeaderV2.DecodeError.signature),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x11, 0x11, 0x00, 0x0C], .version(1)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x22, 0x11, 0x00, 0x0C], .command(2)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x41, 0x00, 0x0C], .family(0x41)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x13, 0x00, 0x0C], .family(0x13)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0B], .length(11, minimum: 12)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x21, 0x00, 0x0C], .length(12, minimum: 36)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0E, 1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2, 0x01, 0x00], .tlv(offset: 28)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x10, 1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2, 0x01, 0x00, 0x05, 0x41], .tlv(offset: 28)),
        ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x10, 1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2, 0x03, 0x00, 0x01, 0x41], .tlv(offset: 28)),
    ] as [([UInt8], ProxyHeaderV2.DecodeError)])
    func malformed(bytes: [UInt8], expected: ProxyHeaderV2.DecodeError) {
        #expect(throws: expected) { try ProxyHeaderV2.decode(bytes) }
    }

    @Test("a wrong signature is refused at its first byte, without waiting for more")
    func earlySignature() {
        #expect(throws: ProxyHeaderV2.DecodeError.signature) { try ProxyHeaderV2.decode([0x16]) }  // a TLS ClientHello
        #expect(throws: ProxyHeaderV2.DecodeError.signature) { try ProxyHeaderV2.decode(Array("PROXY TCP4 ".utf8)) }  // version 1
    }
}

@Suite("PROXY protocol v2 sent to upstreams (send_proxy: v2)")
struct SendProxyTests {
    /// Relays one client through a `send_proxy: v2` cluster; the upstream checks the header byte for
    /// byte before echoing the client's bytes.
    static func relay(datapath: Datapath) async throws {
        let (upstream, received) = try ReceivedHeader.echoingUpstream()
        defer { upstream.stop() }
        var config = ProxyHarness.config(datapath: datapath, upstreams: [upstream.address])
        config.clusters[0].sendProxy = .v2
        try await ProxyHarness.with(config) { _, port in
            let client = try connectClient(port: port)
            defer { client.close() }
            let local = try SocketAddress.local(of: client.fd)
            let payload = Array("after the header".utf8)
            try client.sendAll(payload)
            #expect(try client.receive(exactly: payload.count) == payload, "the client's bytes follow the header, and only they come back")
            let expected = ProxyHeaderV2.tcp(client: local, destination: .ip(IPAddress("127.0.0.1")!, port: port)).encode()
            #expect(received.bytes == expected, "the header, byte for byte: \(received.bytes)")
            guard case .ip(_, let clientPort) = local else { return }
            #expect(Array(expected[24..<26]) == [UInt8(clientPort >> 8), UInt8(clientPort & 0xff)])
        }
    }

    @Test("headers arrive byte for byte, before the client's bytes", arguments: ProxyHarness.userspaceDatapaths)
    func userspace(datapath: Datapath) async throws { try await Self.relay(datapath: datapath) }

    @Test("headers arrive before the sockets join the kernel map", .enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment)))
    func kernel() async throws { try await Self.relay(datapath: .sockmap) }
}

/// The header bytes an upstream thread read, for the test's thread.
final class ReceivedHeader: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [UInt8] = []
    func store(_ bytes: [UInt8]) { lock.withLock { stored = bytes } }
    var bytes: [UInt8] { lock.withLock { stored } }

    /// An upstream that reads the 28-byte PROXY v2 header (IPv4) of each connection into the
    /// returned store, then echoes the rest. The caller stops it.
    static func echoingUpstream() throws -> (ThreadedUpstream, ReceivedHeader) {
        let received = ReceivedHeader()
        let upstream = try ThreadedUpstream { socket in
            received.store((try? socket.receive(exactly: 28)) ?? [])
            echoHandler(socket)
        }
        return (upstream, received)
    }
}
