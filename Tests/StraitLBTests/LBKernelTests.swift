import Foundation
import StraitKernelABI
import StraitLB
import StraitMaglev
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("strait lb: connect-time balancing in a private cgroup and namespace", .serialized, kernelGate)
struct LBKernelTests {
    @Test("a connect to the service reaches a backend, and getpeername shows the service (IPv4, IPv6, IPv4-mapped)",
          arguments: [("ipv4", false, false), ("ipv6", true, false), ("ipv4-mapped", true, true)])
    func connectReachesBackend(_ label: String, _ ipv6Socket: Bool, _ mapped: Bool) throws {
        try LBLab.with { lab in
            let v6Service = ipv6Socket && !mapped
            let vip = v6Service ? LBLab.vip6 : LBLab.vip4
            let backends = (1...3).map { v6Service ? LBLab.backend6($0) : LBLab.backend4($0) }
            let (service, listeners) = try lab.tcpService(vip: vip, backends: backends)
            try lab.balancer.apply([service])
            for _ in 0..<6 {
                let client = try lab.socket(ipv6: ipv6Socket)
                #expect(lab.connect(client, vip, 80, mapped: mapped) == 0, "\(label): connect to the service")
                #expect(lab.acceptAny(listeners) != nil, "\(label): a backend accepted")
                let peer = LBLab.address(of: client, peer: true)
                let expected = mapped ? IPAddress.v6(vip.ipv6Mapped) : vip
                #expect(peer.address == expected && peer.port == 80, "\(label): getpeername shows \(peer.address):\(peer.port)")
                lab.close(socket: client)
            }
            let snapshot = try lab.balancer.snapshot()
            #expect(snapshot.services[0].backends.map(\.connects).reduce(0, +) == 6)
        }
    }

    @Test("UDP: unconnected datagrams reach a backend and the replies come from the service address (IPv4, IPv6, IPv4-mapped)",
          arguments: [("ipv4", false, false), ("ipv6", true, false), ("ipv4-mapped", true, true)])
    func udpRepliesFromService(_ label: String, _ ipv6Socket: Bool, _ mapped: Bool) throws {
        try LBLab.with { lab in
            let v6Service = ipv6Socket && !mapped
            let vip = v6Service ? LBLab.vip6 : LBLab.vip4
            var servers: [CInt] = []
            var backends: [LBBackendConfig] = []
            for index in 1...2 {
                let address = v6Service ? LBLab.backend6(index) : LBLab.backend4(index)
                let (fd, port) = try lab.listener(address, udp: true)
                servers.append(fd)
                backends.append(LBBackendConfig(address: address, port: port))
            }
            try lab.balancer.apply([LBServiceConfig(name: "dns", address: vip, port: 53, transport: .udp, backends: backends)])
            let client = try lab.socket(ipv6: ipv6Socket, udp: true)
            for round in 0..<3 {
                #expect(lab.send(client, [UInt8(round)], to: vip, 53, mapped: mapped) == 0, "\(label): sendto the service")
                guard let ready = lab.waitReadable(servers, milliseconds: 1000) else {
                    Issue.record("\(label): no backend received the datagram")
                    return
                }
                let request = try #require(try lab.receive(ready))
                _ = try lab.withSockaddr(request.from, request.port) { pointer, length in
                    request.bytes.withUnsafeBytes { sendto(ready, $0.baseAddress, $0.count, 0, pointer, length) }
                }
                let reply = try #require(try lab.receive(client), "\(label): a reply")
                let expected = mapped ? IPAddress.v6(vip.ipv6Mapped) : vip
                #expect(reply.bytes == [UInt8(round)])
                #expect(reply.from == expected && reply.port == 53, "\(label): the reply came from \(reply.from):\(reply.port)")
            }
        }
    }

    @Test("Maglev placement in the kernel matches the Swift mirror: each socket lands where its cookie's entry says")
    func placementMatchesMirror() throws {
        try LBLab.with { lab in
            let (service, listeners) = try lab.tcpService(vip: LBLab.vip4, backends: (1...4).map(LBLab.backend4))
            try lab.balancer.apply([service])
            let ids = try lab.balancer.snapshot().services[0].backends.map(\.id)
            let mirror = Maglev.table(members: ids.map { Maglev.Member(id: $0) }, size: LBTable.size)
            #expect(lab.balancer.table(service: "web") == mirror)
            for _ in 0..<40 {
                let client = try lab.socket(ipv6: false)
                let expected = ids.firstIndex(of: mirror[LBTable.entry(cookie: LBLab.cookie(client))])
                #expect(lab.connect(client, LBLab.vip4, 80) == 0)
                #expect(lab.acceptAny(listeners) == expected)
                lab.close(socket: client)
            }
        }
    }

    @Test("removing one backend moves only its clients, in the table and in the kernel")
    func removalMovesOnlyItsClients() throws {
        try LBLab.with { lab in
            let (service, listeners) = try lab.tcpService(vip: LBLab.vip4, backends: (1...4).map(LBLab.backend4))
            try lab.balancer.apply([service])
            let before = try #require(lab.balancer.table(service: "web"))
            let ids = try lab.balancer.snapshot().services[0].backends.map(\.id)
            var smaller = service
            smaller.backends.remove(at: 2)
            try lab.balancer.apply([smaller])
            let after = try #require(lab.balancer.table(service: "web"))
            for entry in before.indices where before[entry] != ids[2] {
                #expect(after[entry] == before[entry], "entry \(entry) moved though its backend stayed")
            }
            #expect(!after.contains(ids[2]))
            // Sockets made now land by the new table; none reaches the removed backend.
            for _ in 0..<30 {
                let client = try lab.socket(ipv6: false)
                let entry = LBTable.entry(cookie: LBLab.cookie(client))
                #expect(lab.connect(client, LBLab.vip4, 80) == 0)
                let landed = try #require(lab.acceptAny(listeners))
                #expect(ids[landed] == after[entry])
                if before[entry] != ids[2] { #expect(ids[landed] == before[entry]) }
                lab.close(socket: client)
            }
        }
    }

    @Test("no torn table during rapid changes under load: every connect reaches a backend of one configuration")
    func noTornTable() throws {
        try LBLab.with { lab in
            let (service, listeners) = try lab.tcpService(vip: LBLab.vip4, backends: (1...4).map(LBLab.backend4))
            var first = service
            first.backends = Array(service.backends[0..<2])
            var second = service
            second.backends = Array(service.backends[2..<4])
            second.policy = .random
            try lab.balancer.apply([first])
            let stop = ManagedFlag()
            let failures = LockedCounter()
            let connects = LockedCounter()
            let finished = LockedCounter()
            let sockets = try (0..<4).map { _ in try (0..<150).map { _ in try lab.socket(ipv6: false) } }
            let balancer = lab.balancer
            try concurrently([
                { [first, second] in
                    var round = 0
                    while !stop.isSet && round < 2000 {
                        try balancer.apply([round % 2 == 0 ? second : first])
                        round += 1
                    }
                },
            ] + sockets.map { batch in
                { @Sendable in
                    for fd in batch {
                        if lab.connect(fd, LBLab.vip4, 80) == 0 { connects.add() } else { failures.add() }
                    }
                    finished.add()
                    if finished.value == sockets.count { stop.set() }
                }
            })
            #expect(failures.value == 0)
            #expect(connects.value == 600)
            var accepted = 0
            while lab.acceptAny(listeners) != nil { accepted += 1 }
            #expect(accepted == 600, "every connect reached a listening backend")
        }
    }

    @Test("a process outside the cgroup connects to the real address, untouched")
    func outsideIsUntouched() throws {
        try LBLab.with { lab in
            let (service, listeners) = try lab.tcpService(vip: LBLab.vip4, backends: [LBLab.backend4(1)])
            let real = try lab.listener(LBLab.vip4, port: 0)
            var onRealPort = service
            onRealPort.port = real.port
            try lab.balancer.apply([onRealPort])
            let outside = try lab.socket(ipv6: false, inside: false)
            #expect(lab.connect(outside, LBLab.vip4, real.port) == 0)
            #expect(lab.acceptAny([real.fd]) == 0, "the real listener on the virtual address accepted")
            let inside = try lab.socket(ipv6: false)
            #expect(lab.connect(inside, LBLab.vip4, real.port) == 0)
            #expect(lab.acceptAny(listeners + [real.fd]) == 0, "the backend accepted the balanced one")
        }
    }

    @Test("a service with no live backend refuses at once with ECONNREFUSED (TCP connect and UDP sendto)")
    func noBackendRefused() throws {
        try LBLab.with { lab in
            let (service, _) = try lab.tcpService(vip: LBLab.vip4, backends: [LBLab.backend4(1)])
            let down: Set<LBBackendRef> = [LBBackendRef(service: "web", backend: service.backends[0].endpoint)]
            let udp = LBServiceConfig(name: "udp", address: LBLab.vip6, port: 53, transport: .udp, backends: [])
            try lab.balancer.apply([service, udp], down: down)
            for ipv6 in [false, true] {
                let client = try lab.socket(ipv6: ipv6)
                let started = SocketCall.monotonicNanoseconds()
                #expect(lab.connect(client, LBLab.vip4, 80, mapped: ipv6) == ECONNREFUSED)
                #expect(SocketCall.monotonicNanoseconds() - started < 1_000_000_000, "refused at once")
            }
            let datagram = try lab.socket(ipv6: true, udp: true)
            #expect(lab.send(datagram, [1], to: LBLab.vip6, 53) == ECONNREFUSED)
            #expect(try lab.balancer.snapshot().counters.refused == 3)
            // Back up: connects succeed again.
            try lab.balancer.apply([service, udp])
            let client = try lab.socket(ipv6: false)
            #expect(lab.connect(client, LBLab.vip4, 80) == 0)
        }
    }
}

/// A flag set once, from any thread.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    var isSet: Bool { lock.withLock { raised } }
    func set() { lock.withLock { raised = true } }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add() { lock.withLock { count += 1 } }
}
