import Foundation
import StraitBPF
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

/// Hand-built frames for `BPF_PROG_TEST_RUN`: Ethernet from 02:00:00:00:00:02.
enum Frame {
    static let source: [UInt8] = [0x02, 0, 0, 0, 0, 0x02]
    static func ethernet(_ type: UInt16) -> [UInt8] {
        [0x02, 0, 0, 0, 0, 0x01] + source + [UInt8(type >> 8), UInt8(type & 0xff)]
    }

    static func ipv4(from source: String, protocol: UInt8 = 17, ihl: UInt8 = 5, fragmentOffset: UInt16 = 0, payload: [UInt8]) -> [UInt8] {
        var header: [UInt8] = [0x40 | ihl, 0, 0, 0, 0, 0, UInt8(fragmentOffset >> 8), UInt8(fragmentOffset & 0xff), 64, `protocol`, 0, 0]
        header += IPAddress(source)!.bytes + [198, 18, 0, 1]
        if ihl > 5 { header += [UInt8](repeating: 1, count: Int(ihl - 5) * 4) }
        return ethernet(0x0800) + header + payload
    }

    static func ipv6(from source: String, next: UInt8, extensions: [UInt8] = [], payload: [UInt8]) -> [UInt8] {
        ethernet(0x86dd) + [0x60, 0, 0, 0, 0, 0, next, 64] + IPAddress(source)!.bytes + IPAddress("2001:db8::1")!.bytes + extensions + payload
    }

    /// An 8-byte extension header (hop-by-hop, destination options or routing) leading to `next`.
    static func extensionHeader(next: UInt8) -> [UInt8] { [next, 0, 0, 0, 0, 0, 0, 0] }

    static func udp(to port: UInt16) -> [UInt8] { [0x30, 0x39, UInt8(port >> 8), UInt8(port & 0xff), 0, 8, 0, 0] }
    static func tcp(to port: UInt16) -> [UInt8] { [0x30, 0x39, UInt8(port >> 8), UInt8(port & 0xff)] + [UInt8](repeating: 0, count: 16) }
}

let xdpDrop: UInt32 = 1
let xdpPass: UInt32 = 2

@Suite("strait drop: frames the parser must survive (BPF_PROG_TEST_RUN)", .serialized, kernelGate)
struct DropFrameTests {
    /// Runs the pinned program on `frame` and returns its verdict, checking which counter moved.
    static func verdict(_ dropper: Dropper, _ frame: [UInt8], expect expected: DropVerdict, sourceLocation: SourceLocation = #_sourceLocation) throws -> UInt32 {
        let before = try dropper.stats().count(expected).packets
        let program = try BPFProgram.open(pinned: dropper.pinDirectory + "/prog")
        let result = try program.testRun(input: frame)
        #expect(try dropper.stats().count(expected).packets == before + 1, "counted as \(expected)", sourceLocation: sourceLocation)
        return result.returnValue
    }

    @Test("truncated and malformed headers are dropped as malformed; unknown EtherTypes pass")
    func malformed() throws {
        try DropLab.with(attach: false) { lab in
            let d = lab.dropper
            let program = try BPFProgram.open(pinned: d.pinDirectory + "/prog")
            // The kernel refuses test runs shorter than an Ethernet header; on the wire the
            // program's own bound check drops them (same branch as the cut VLAN tag below).
            #expect(throws: BPFError.self) { _ = try program.testRun(input: [UInt8](repeating: 0, count: 13)) }
            #expect(try Self.verdict(d, Frame.ethernet(0x8100), expect: .droppedMalformed) == xdpDrop, "VLAN tag cut off")
            #expect(try Self.verdict(d, Frame.ethernet(0x0800) + [0x45, 0, 0], expect: .droppedMalformed) == xdpDrop, "IPv4 header cut off")
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", ihl: 4, payload: Frame.udp(to: 53)), expect: .droppedMalformed) == xdpDrop, "IHL below 5")
            var longIHL = Frame.ipv4(from: "198.18.0.2", ihl: 5, payload: [])
            longIHL[14] = 0x4f  // claims 60 bytes of header, the frame holds 20
            #expect(try Self.verdict(d, longIHL, expect: .droppedMalformed) == xdpDrop, "IHL beyond the frame")
            var wrongVersion = Frame.ipv4(from: "198.18.0.2", payload: Frame.udp(to: 53))
            wrongVersion[14] = 0x65
            #expect(try Self.verdict(d, wrongVersion, expect: .droppedMalformed) == xdpDrop, "version 6 in an IPv4 EtherType")
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", payload: [0x30]), expect: .droppedMalformed) == xdpDrop, "UDP without room for ports")
            #expect(try Self.verdict(d, Frame.ethernet(0x86dd) + [0x60, 0, 0], expect: .droppedMalformed) == xdpDrop, "IPv6 header cut off")
            #expect(try Self.verdict(d, Frame.ethernet(0x0806) + [0, 1, 8, 0], expect: .droppedMalformed) == xdpDrop, "ARP cut off")
            #expect(try Self.verdict(d, Frame.ethernet(0x88cc) + [UInt8](repeating: 0, count: 46), expect: .passedNotIP) == xdpPass, "LLDP is not filtered")
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", payload: Frame.udp(to: 53)), expect: .passedNoMatch) == xdpPass)
            let fast = try program.testRun(input: Frame.ipv4(from: "198.18.0.2", ihl: 4, payload: []), repetitions: 100_000)
            #expect(fast.returnValue == xdpDrop && fast.nanosecondsPerRun < 5_000, "no stall: \(fast.nanosecondsPerRun) ns a run")
        }
    }

    @Test("IPv6 extension headers are walked to the transport header; long or cut chains are malformed; later fragments have no ports")
    func ipv6Extensions() throws {
        try DropLab.with(attach: false) { lab in
            let d = lab.dropper
            try d.add(.destinationPort(.tcp, 46_022))
            let hopByHop: UInt8 = 0, routing: UInt8 = 43, fragment: UInt8 = 44, destination: UInt8 = 60, tcp: UInt8 = 6, udp: UInt8 = 17
            let chain = Frame.extensionHeader(next: destination) + Frame.extensionHeader(next: routing) + Frame.extensionHeader(next: tcp)
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: hopByHop, extensions: chain, payload: Frame.tcp(to: 46_022)), expect: .droppedBlocked) == xdpDrop, "port rule found behind three extension headers")
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: hopByHop, extensions: chain, payload: Frame.tcp(to: 46_023)), expect: .passedNoMatch) == xdpPass)
            let nine = (0..<9).flatMap { _ in Frame.extensionHeader(next: destination) }
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: destination, extensions: nine, payload: Frame.udp(to: 53)), expect: .droppedMalformed) == xdpDrop, "more than 8 extension headers")
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: hopByHop, extensions: [udp, 0], payload: []), expect: .droppedMalformed) == xdpDrop, "extension header cut off")
            let laterFragment: [UInt8] = [tcp, 0, 0x00, 0x10, 0, 0, 0, 1]  // offset 2 (x 8 bytes)
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: fragment, extensions: laterFragment, payload: Frame.tcp(to: 46_022)), expect: .passedNoMatch) == xdpPass, "no ports in a later fragment")
            let firstFragment: [UInt8] = [tcp, 0, 0x00, 0x01, 0, 0, 0, 1]  // offset 0, more fragments
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::2", next: fragment, extensions: firstFragment, payload: Frame.tcp(to: 46_022)), expect: .droppedBlocked) == xdpDrop)
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", protocol: tcp, fragmentOffset: 0x0004, payload: Frame.tcp(to: 46_022)), expect: .passedNoMatch) == xdpPass, "IPv4 later fragment")
            #expect(try Self.verdict(d, Frame.ethernet(0x8100) + [0, 5, 0x08, 0x00] + Array(Frame.ipv4(from: "198.18.0.2", protocol: tcp, payload: Frame.tcp(to: 46_022)).dropFirst(14)), expect: .droppedBlocked) == xdpDrop, "behind a VLAN tag")
        }
    }

    @Test("the longest prefix wins: a /32 inside a /8 counts its own matches")
    func longestPrefix() throws {
        try DropLab.with(attach: false) { lab in
            let d = lab.dropper
            let wide = try DropRule(parsing: "198.0.0.0/8"), narrow = try DropRule(parsing: "198.18.0.9/32")
            let wide6 = try DropRule(parsing: "2001:db8::/32"), narrow6 = try DropRule(parsing: "2001:db8::9")
            for rule in [wide, narrow, wide6, narrow6] { try d.add(rule) }
            for source in ["198.18.0.9", "198.18.0.9", "198.18.0.10"] {
                #expect(try Self.verdict(d, Frame.ipv4(from: source, payload: Frame.udp(to: 53)), expect: .droppedBlocked) == xdpDrop)
            }
            #expect(try Self.verdict(d, Frame.ipv6(from: "2001:db8::9", next: 17, payload: Frame.udp(to: 53)), expect: .droppedBlocked) == xdpDrop)
            let stats = try d.stats()
            #expect(stats.count(narrow)?.packets == 2 && stats.count(wide)?.packets == 1)
            #expect(stats.count(narrow6)?.packets == 1 && stats.count(wide6)?.packets == 0)
            #expect(try d.remove(narrow) && !(try d.remove(narrow)))
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.9", payload: Frame.udp(to: 53)), expect: .droppedBlocked) == xdpDrop, "the /8 still holds it")
            #expect(try d.stats().count(wide)?.packets == 2)
        }
    }

    @Test("stats in the Prometheus text format: verdicts, and rules that matched")
    func prometheus() throws {
        try DropLab.with(attach: false) { lab in
            let d = lab.dropper
            try d.add(DropRule(parsing: "198.18.0.0/15"))
            try d.add(DropRule(parsing: "tcp/46001"))
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", payload: Frame.udp(to: 53)), expect: .droppedBlocked) == xdpDrop)
            let text = try d.stats().prometheusText()
            #expect(text.contains("strait_drop_frames_total{verdict=\"dropped_blocked\",action=\"drop\"} 1\n"))
            #expect(text.contains("strait_drop_rule_frames_total{rule=\"198.18.0.0/15\",mode=\"block\"} 1\n"))
            #expect(!text.contains("tcp/46001"), "rules that never matched make no series")
        }
    }

    @Test("Ethernet source rules, and allow-list mode passing neighbour discovery")
    func macAndNeighborDiscovery() throws {
        try DropLab.with(attach: false) { lab in
            let d = lab.dropper
            try d.add(DropRule(parsing: "mac 02:00:00:00:00:02"))
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", payload: Frame.udp(to: 53)), expect: .droppedBlocked) == xdpDrop)
            try d.load(DropRuleSet(mode: .allow, rules: [try DropRule(parsing: "198.18.0.0/15")]))
            #expect(try Self.verdict(d, Frame.ipv4(from: "198.18.0.2", payload: Frame.udp(to: 53)), expect: .passedAllowed) == xdpPass)
            #expect(try Self.verdict(d, Frame.ipv6(from: "fe80::2", next: 58, payload: [135, 0, 0, 0]), expect: .passedNeighborDiscovery) == xdpPass)
            #expect(try Self.verdict(d, Frame.ipv6(from: "fe80::2", next: 58, payload: [128, 0, 0, 0]), expect: .droppedNotAllowed) == xdpDrop, "echo request is not listed")
        }
    }
}

@Suite("strait drop: rule text")
struct DropRuleTextTests {
    @Test("every text form parses and prints back the same")
    func roundTrip() throws {
        for text in ["198.18.0.0/15", "2001:db8::/32", "tcp/22", "udp/53", "mac 02:00:5e:00:53:01", "arp 198.18.0.7/32"] {
            #expect(try DropRule(parsing: text).description == text)
        }
        #expect(try DropRule(parsing: "198.18.0.7") == .source(IPPrefix("198.18.0.7/32")!))
        #expect(try DropRule(parsing: "src 2001:db8::1") == .source(IPPrefix("2001:db8::1/128")!))
        #expect(try DropRule(parsing: "TCP 443") == .destinationPort(.tcp, 443))
    }

    @Test("host bits are refused with the network they would mean; an empty length is not a host")
    func hostBits() throws {
        let error = #expect(throws: DropError.self) { _ = try DropRule(parsing: "1.2.3.4/24") }
        #expect(error?.description.contains("the network is 1.2.3.0/24") == true, "\(String(describing: error))")
        #expect(error?.description.contains("1.2.3.4/32") == true)
        #expect(throws: DropError.self) { _ = try DropRule(parsing: "2001:db8::1/32") }
        #expect(throws: DropError.self) { _ = try DropRule(parsing: "arp 198.18.3.7/16") }
        for text in ["198.18.0.0/", "198.18.0.0/+8", "198.18.0.0/ 8", "198.18.0.0//8", "198.18.0.0/0008"] {
            #expect(throws: DropError.self, "\(text)") { _ = try DropRule(parsing: text) }
        }
        #expect(try DropRule(parsing: "198.18.0.0/15") == .source(IPPrefix("198.18.0.0/15")!))
        #expect(try DropRule(parsing: "0.0.0.0/0") == .source(IPPrefix("0.0.0.0/0")!))
    }

    @Test("a CRLF rule file reads line by line; a byte-order mark is skipped; binary is refused without echoing it")
    func fileEncodings() throws {
        let crlf = try DropRuleSet(parsingFile: Array("mode allow\r\n198.18.0.0/15\r\ntcp/22\r\n".utf8))
        #expect(crlf == DropRuleSet(mode: .allow, rules: [.source(IPPrefix("198.18.0.0/15")!), .destinationPort(.tcp, 22)]))
        let error = #expect(throws: DropError.self) { _ = try DropRuleSet(parsingFile: "tcp/22\r\nnonsense\r\n") }
        #expect(error?.description.contains("line 2") == true)
        #expect(try DropRuleSet(parsingFile: [0xEF, 0xBB, 0xBF] + Array("tcp/22\n".utf8)).rules == [.destinationPort(.tcp, 22)])
        for bytes: [UInt8] in [[0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01], [0x74, 0x63, 0x70, 0x2F, 0x32, 0x00, 0x0A], [0xFF, 0xFE, 0x00]] {
            let error = #expect(throws: DropError.self) { _ = try DropRuleSet(parsingFile: bytes) }
            #expect(error.map { !$0.description.unicodeScalars.contains { $0.value < 0x20 } } == true, "\(String(describing: error))")
        }
        #expect(try DropRuleSet(parsingFile: "# nothing\n\n").rules.isEmpty, "an empty set parses; `strait drop load` refuses it without --allow-empty")
    }

    @Test("bad rules say what is wrong")
    func errors() {
        for text in ["", "tcp/0", "tcp/70000", "sctp/1", "mac 02:00", "arp 2001:db8::1", "198.18.0.0/33", "block everything"] {
            #expect(throws: DropError.self, "\(text)") { _ = try DropRule(parsing: text) }
        }
    }

    @Test("a rule file: one rule a line, comments, a mode line; errors name the line")
    func file() throws {
        let set = try DropRuleSet(parsingFile: "# office\nmode allow\n198.18.0.0/15   # lab\n\ntcp/22\ntcp/22\n")
        #expect(set == DropRuleSet(mode: .allow, rules: [.source(IPPrefix("198.18.0.0/15")!), .destinationPort(.tcp, 22)]))
        let error = #expect(throws: DropError.self) { _ = try DropRuleSet(parsingFile: "tcp/22\nnonsense here\n") }
        #expect(error?.description.contains("line 2") == true)
    }

    @Test("the lock-out check follows the kernel's rules")
    func admits() throws {
        let peer = IPAddress("198.18.0.2")!
        #expect(DropRuleSet().admits(source: peer, tcpPort: 22))
        #expect(!DropRuleSet(rules: [.source(IPPrefix("198.18.0.0/24")!)]).admits(source: peer, tcpPort: 22))
        #expect(!DropRuleSet(rules: [.destinationPort(.tcp, 22)]).admits(source: peer, tcpPort: 22))
        #expect(!DropRuleSet(mode: .allow).admits(source: peer, tcpPort: 22))
        #expect(DropRuleSet(mode: .allow, rules: [.destinationPort(.tcp, 22)]).admits(source: peer, tcpPort: 22))
        #expect(ProtectedSource.fromEnvironment(["SSH_CONNECTION": "::ffff:198.18.0.2 50000 198.18.0.1 22"])
            == [ProtectedSource(address: peer, tcpPort: 22, origin: "SSH_CONNECTION")])
        #expect(ProtectedSource.fromEnvironment(["SSH_CLIENT": "2001:db8::7 50000 2222"])
            == [ProtectedSource(address: IPAddress("2001:db8::7")!, tcpPort: 2222, origin: "SSH_CLIENT")])
        #expect(ProtectedSource.fromEnvironment([:]).isEmpty)
    }

    @Test("established peers are read from /proc/net/tcp of the namespace", kernelGate)
    func establishedPeers() throws {
        try DropLab.with(attach: false) { lab in
            let listener = try TCPListener(in: lab.receiver, ip: lab.receiverIPv4)
            let client = try boundSocket(in: lab.sender, type: Int32(SOCK_STREAM.rawValue), ip: lab.allowedIPv4)
            defer { close(client) }
            var (address, length) = socketAddress(lab.receiverIPv4, listener.port)
            let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) } }
            #expect(connected == 0)
            let port = listener.port
            let peers = try lab.receiver.run { ProtectedSource.establishedPeers(localPort: port) }
            #expect(peers.map(\.address) == [IPAddress(lab.allowedIPv4)!])
            #expect(peers.first?.tcpPort == port)
        }
    }
}
