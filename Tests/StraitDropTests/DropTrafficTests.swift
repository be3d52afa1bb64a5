import CStraitSystem
import Foundation
import StraitBPF
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

@Suite("strait drop: traffic through a veth pair", .serialized, kernelGate)
struct DropTrafficTests {
    @Test("IPv4: a blocked source's TCP connects and UDP datagrams never reach the listener; an allowed source's do")
    func blockedIPv4() throws {
        try DropLab.with { lab in
            try lab.dropper.add(DropRule(parsing: lab.blockedIPv4))
            try Self.expectBlocked(lab, receiver: lab.receiverIPv4, allowed: lab.allowedIPv4, blocked: lab.blockedIPv4)
            let stats = try lab.dropper.stats()
            #expect(stats.count(.source(IPPrefix(lab.blockedIPv4)!))!.packets >= 20)
            #expect(stats.count(.droppedBlocked).packets >= 20)
            #expect(stats.attachments == [try lab.receiverAttachment(mode: .native, live: true)])
        }
    }

    @Test("IPv6: the same, by a /128 source rule, in generic mode")
    func blockedIPv6() throws {
        try DropLab.with(mode: .generic) { lab in
            try lab.dropper.add(DropRule(parsing: lab.blockedIPv6 + "/128"))
            try Self.expectBlocked(lab, receiver: lab.receiverIPv6, allowed: lab.allowedIPv6, blocked: lab.blockedIPv6)
            #expect(try lab.dropper.stats().count(.source(IPPrefix(lab.blockedIPv6)!))!.packets >= 20)
        }
    }

    @Test("a destination-port rule drops UDP to that port only, from every source")
    func portRule() throws {
        try DropLab.with { lab in
            let blockedSink = try UDPSink(in: lab.receiver, ip: lab.receiverIPv4)
            let openSink = try UDPSink(in: lab.receiver, ip: lab.receiverIPv4)
            try lab.dropper.add(.destinationPort(.udp, blockedSink.port))
            let toBlocked = try UDPSource(in: lab.sender, ip: lab.allowedIPv4, to: lab.receiverIPv4, port: blockedSink.port)
            let toOpen = try UDPSource(in: lab.sender, ip: lab.allowedIPv4, to: lab.receiverIPv4, port: openSink.port)
            for sequence in UInt32(0)..<20 {
                try toBlocked.send(sequence)
                try toOpen.send(sequence)
            }
            blockedSink.drain()
            openSink.drain()
            #expect(blockedSink.sequences(from: lab.allowedIPv4).isEmpty)
            #expect(openSink.sequences(from: lab.allowedIPv4).count == 20)
            #expect(try lab.dropper.stats().count(.destinationPort(.udp, blockedSink.port))?.packets == 20)
        }
    }

    /// Sends 20 datagrams and tries one TCP connect from each of `allowed` and `blocked`.
    static func expectBlocked(_ lab: DropLab, receiver: String, allowed: String, blocked: String) throws {
        let sink = try UDPSink(in: lab.receiver, ip: receiver)
        let fromAllowed = try UDPSource(in: lab.sender, ip: allowed, to: receiver, port: sink.port)
        let fromBlocked = try UDPSource(in: lab.sender, ip: blocked, to: receiver, port: sink.port)
        for sequence in UInt32(0)..<20 {
            try fromAllowed.send(sequence)
            try fromBlocked.send(sequence)
        }
        sink.drain()
        #expect(sink.sequences(from: allowed) == Set(0..<20))
        #expect(sink.sequences(from: blocked).isEmpty)

        let listener = try TCPListener(in: lab.receiver, ip: receiver)
        #expect(try tcpConnects(in: lab.sender, from: allowed, to: receiver, port: listener.port))
        #expect(try !tcpConnects(in: lab.sender, from: blocked, to: receiver, port: listener.port, timeout: 1.0))
        #expect(listener.acceptAll() == [IPAddress(allowed)!.description])
    }

    @Test("rules added and removed while traffic flows apply at the next packet, with no reload and no allowed packet lost")
    func rulesChangeUnderTraffic() throws {
        try DropLab.with { lab in
            let programID = try lab.attachedProgramID()
            let sink = try UDPSink(in: lab.receiver, ip: lab.receiverIPv4)
            let steady = try UDPSource(in: lab.sender, ip: lab.allowedIPv4, to: lab.receiverIPv4, port: sink.port)
            let toggled = try UDPSource(in: lab.sender, ip: lab.blockedIPv4, to: lab.receiverIPv4, port: sink.port)
            let rule = try DropRule(parsing: lab.blockedIPv4)
            let count: UInt32 = 3000
            let receiving = Thread { sink.drain(quiet: 1.0) }
            receiving.start()
            // Phases of 300 sequence numbers: the toggled source is blocked in odd phases.
            for sequence in UInt32(0)..<count {
                let phase = sequence / 300
                if sequence % 300 == 0 {
                    if phase % 2 == 1 { try lab.dropper.add(rule) } else if phase > 0 { try lab.dropper.remove(rule) }
                }
                try steady.send(sequence)
                try toggled.send(sequence)
                if sequence % 50 == 0 { usleep(1000) }
            }
            while receiving.isExecuting || !receiving.isFinished { usleep(50_000) }
            #expect(sink.sequences(from: lab.allowedIPv4) == Set(0..<count), "every packet from the allowed source arrives")
            let toggledReceived = sink.sequences(from: lab.blockedIPv4)
            let expected = Set((0..<count).filter { ($0 / 300) % 2 == 0 })
            #expect(toggledReceived == expected, "the toggled source passes exactly in the phases without its rule")
            #expect(try lab.attachedProgramID() == programID, "the program was never replaced")
        }
    }

    @Test("load swaps a whole rule set at once: a source blocked by both sets never gets through during the swap")
    func atomicLoad() throws {
        try DropLab.with { lab in
            let programID = try lab.attachedProgramID()
            func fillers(_ third: Int) -> [DropRule] {
                (0..<3000).map { .source(IPPrefix("198.19.\(third + $0 / 256).\($0 % 256)")!) }
            }
            let blocked = try DropRule(parsing: lab.blockedIPv4)
            let first = DropRuleSet(rules: [blocked] + fillers(0))
            let second = DropRuleSet(rules: fillers(100) + [blocked, .destinationPort(.tcp, 46_999)])
            try lab.dropper.load(first)
            let sink = try UDPSink(in: lab.receiver, ip: lab.receiverIPv4)
            let steady = try UDPSource(in: lab.sender, ip: lab.allowedIPv4, to: lab.receiverIPv4, port: sink.port)
            let fromBlocked = try UDPSource(in: lab.sender, ip: lab.blockedIPv4, to: lab.receiverIPv4, port: sink.port)
            let done = Flag()
            let sent = Counter()
            let sending = Thread {
                var sequence: UInt32 = 0
                while !done.isSet && sequence < 200_000 {
                    try? steady.send(sequence)
                    try? fromBlocked.send(sequence)
                    sequence += 1
                    if sequence % 20 == 0 { usleep(200) }
                }
                sent.set(Int(sequence))
            }
            let receiving = Thread { sink.drain(quiet: 1.0) }
            receiving.start()
            sending.start()
            for round in 0..<4 { try lab.dropper.load(round % 2 == 0 ? second : first) }
            done.set()
            while !sending.isFinished || !receiving.isFinished { usleep(50_000) }
            #expect(sink.sequences(from: lab.blockedIPv4).isEmpty)
            #expect(sink.sequences(from: lab.allowedIPv4).count == sent.value)
            let after = try lab.dropper.ruleSet()
            #expect(Set(after.rules) == Set(first.rules) && after.mode == .block)
            let stats = try lab.dropper.stats()
            #expect(stats.count(blocked)!.packets == UInt64(sent.value), "the rule kept its counter across every swap")
            #expect(try lab.attachedProgramID() == programID)
        }
    }

    @Test("ARP from a blocked sender is dropped: no reply comes back; an allowed sender gets one")
    func arpBlocked() throws {
        try DropLab.with { lab in
            try lab.dropper.add(DropRule(parsing: "arp \(lab.blockedIPv4)"))
            let probe = try ARPProbe(in: lab.sender, interface: lab.senderInterface)
            #expect(try probe.asks(from: lab.blockedIPv4, for: lab.receiverIPv4) == false)
            #expect(try probe.asks(from: lab.allowedIPv4, for: lab.receiverIPv4) == true)
            #expect(try lab.dropper.stats().count(.arpSender(IPPrefix(lab.blockedIPv4)!))?.packets == 1)
        }
    }

    @Test("allow-list mode passes only listed sources, and refuses changes that would lock out the protected peer")
    func allowListAndLockOut() throws {
        try DropLab.with { lab in
            let peer = ProtectedSource(address: IPAddress(lab.allowedIPv4)!, tcpPort: 22, origin: "test")
            #expect(throws: DropError.self, "allow-list mode with no rules drops everything") {
                try lab.dropper.setMode(.allow, protecting: [peer])
            }
            #expect(throws: DropError.self) { try lab.dropper.add(DropRule(parsing: "198.18.0.0/15"), protecting: [peer]) }
            #expect(throws: DropError.self) {
                try lab.dropper.load(DropRuleSet(mode: .allow, rules: [.source(IPPrefix(lab.blockedIPv4)!)]), protecting: [peer])
            }
            #expect(try lab.dropper.ruleSet() == DropRuleSet(), "a refused change changes nothing")

            try lab.dropper.load(DropRuleSet(mode: .allow, rules: [.source(IPPrefix("\(lab.allowedIPv4)/32")!)]), protecting: [peer])
            let error = #expect(throws: DropError.self) { try lab.dropper.remove(.source(IPPrefix("\(lab.allowedIPv4)/32")!), protecting: [peer]) }
            #expect(error?.description.contains(lab.allowedIPv4) == true)
            // A port rule admits the peer too, so the prefix may go once it is there.
            try lab.dropper.add(.destinationPort(.tcp, 22), protecting: [peer])
            #expect(try lab.dropper.remove(.source(IPPrefix("\(lab.allowedIPv4)/32")!), protecting: [peer]))
            try lab.dropper.add(.source(IPPrefix("\(lab.allowedIPv4)/32")!))

            let sink = try UDPSink(in: lab.receiver, ip: lab.receiverIPv4)
            let listed = try UDPSource(in: lab.sender, ip: lab.allowedIPv4, to: lab.receiverIPv4, port: sink.port)
            let unlisted = try UDPSource(in: lab.sender, ip: lab.blockedIPv4, to: lab.receiverIPv4, port: sink.port)
            for sequence in UInt32(0)..<10 {
                try listed.send(sequence)
                try unlisted.send(sequence)
            }
            sink.drain()
            #expect(sink.sequences(from: lab.allowedIPv4).count == 10)
            #expect(sink.sequences(from: lab.blockedIPv4).isEmpty)
            let stats = try lab.dropper.stats()
            #expect(stats.mode == .allow)
            #expect(stats.count(.droppedNotAllowed).packets >= 10)
        }
    }

    @Test("an interface that went away shows as not live, and detach clears its pin")
    func interfaceGone() throws {
        try DropLab.with { lab in
            let gone = try lab.receiverAttachment(mode: .native, live: false)
            try NetworkNamespace.runIP(["-n", lab.receiver.name, "link", "del", lab.receiverInterface])
            #expect(lab.dropper.attachments() == [gone])
            let (dropper, interface) = (lab.dropper, lab.receiverInterface)
            try lab.receiver.run { try dropper.detach(interface: interface) }
            #expect(!Dropper.isLoaded(pinDirectory: lab.dropper.pinDirectory))
        }
    }

    @Test("detach leaves nothing attached and nothing pinned")
    func detachLeavesNothing() throws {
        try DropLab.with { lab in
            try lab.dropper.add(DropRule(parsing: lab.blockedIPv4))
            #expect(try lab.attachedProgramID() != 0)
            #expect(throws: DropError.self, "one attachment per interface") {
                try lab.receiver.run { try lab.dropper.attach(interface: lab.receiverInterface, mode: .generic) }
            }
            let (dropper, interface) = (lab.dropper, lab.receiverInterface)
            try lab.receiver.run { try dropper.detach(interface: interface) }
            #expect(try lab.attachedProgramID() == 0)
            #expect(!FileManager.default.fileExists(atPath: lab.dropper.pinDirectory))
            #expect(!Dropper.isLoaded(pinDirectory: lab.dropper.pinDirectory))
            #expect(throws: DropError.self) { _ = try Dropper.open(pinDirectory: lab.dropper.pinDirectory) }
        }
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    var isSet: Bool { lock.withLock { raised } }
    func set() { lock.withLock { raised = true } }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var stored = 0
    var value: Int { lock.withLock { stored } }
    func set(_ value: Int) { lock.withLock { stored = value } }
}

/// Sends ARP requests with a chosen sender address from a packet socket, and waits for the reply.
struct ARPProbe {
    let fd: CInt
    let ifindex: Int32
    let mac: [UInt8]

    init(in namespace: NetworkNamespace, interface: String) throws {
        (fd, ifindex, mac) = try namespace.run {
            let fd = try systemCall("socket(AF_PACKET)") { socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(UInt16(0x0806).bigEndian)) }
            let index = try NetworkInterface(named: interface).index
            var address = sockaddr_ll()
            address.sll_family = UInt16(AF_PACKET)
            address.sll_protocol = UInt16(0x0806).bigEndian
            address.sll_ifindex = Int32(index)
            _ = try withUnsafePointer(to: &address) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                    try systemCall("bind(AF_PACKET)") { bind(fd, raw, socklen_t(MemoryLayout<sockaddr_ll>.size)) }
                }
            }
            var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            // A bound packet socket's name carries the interface's hardware address.
            var bound = sockaddr_ll()
            var length = socklen_t(MemoryLayout<sockaddr_ll>.size)
            _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            let mac = withUnsafeBytes(of: bound.sll_addr) { Array($0.prefix(6)) }
            return (fd, Int32(index), mac)
        }
    }

    /// Sends one request from `sender` for `target`; true when a reply to `sender` arrives within a second.
    func asks(from sender: String, for target: String) throws -> Bool {
        let senderIP = IPAddress(sender)!.bytes, targetIP = IPAddress(target)!.bytes
        let frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + mac + [0x08, 0x06]
            + [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01] + mac + senderIP + [0, 0, 0, 0, 0, 0] + targetIP
        var address = sockaddr_ll()
        address.sll_family = UInt16(AF_PACKET)
        address.sll_ifindex = ifindex
        address.sll_halen = 6
        withUnsafeMutableBytes(of: &address.sll_addr) { $0.copyBytes(from: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]) }
        _ = try frame.withUnsafeBytes { bytes in
            try withUnsafePointer(to: &address) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                    try systemCall("sendto(AF_PACKET)") { sendto(fd, bytes.baseAddress, bytes.count, 0, raw, socklen_t(MemoryLayout<sockaddr_ll>.size)) }
                }
            }
        }
        let deadline = Date().addingTimeInterval(1)
        var buffer = [UInt8](repeating: 0, count: 256)
        while Date() < deadline {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count >= 42 else { continue }
            // An ARP reply (operation 2) whose target protocol address is our sender address.
            if buffer[12] == 0x08, buffer[13] == 0x06, buffer[21] == 2, Array(buffer[38..<42]) == senderIP { return true }
        }
        return false
    }
}

@Suite("strait drop: doctor's XDP answer", .serialized, kernelGate)
struct XDPSupportTests {
    @Test("a veth answers native, read-only by driver and by probing, and the probe leaves nothing attached")
    func vethIsNative() throws {
        try DropLab.with(attach: false) { lab in
            let interface = lab.receiverInterface
            let (readOnly, probed, after) = try lab.receiver.run {
                let found = try NetworkInterface(named: interface)
                return (XDPSupport.check(found, probe: false), XDPSupport.check(found, probe: true), try XDPAttachment.query(ifindex: found.index))
            }
            #expect(readOnly.driver == "veth" && readOnly.native && readOnly.method == "read-only, by driver")
            #expect(probed.native && probed.method == "probed")
            #expect(after.programID == 0)
        }
    }
}
