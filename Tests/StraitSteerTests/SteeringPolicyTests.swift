import Foundation
import StraitBPF
import StraitKernelABI
import StraitSteer
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// Members of one SO_REUSEPORT group on 127.0.0.1 of the calling thread's namespace, joined to a
/// steering group; closed on `close()`.
final class GroupFixture {
    let steering: SteeringGroup
    var sockets: [CInt] = []
    let port: UInt16
    let udp: Bool

    init(policy: SteeringPolicy, members: Int, udp: Bool, weights: [Int]? = nil) throws {
        steering = try SteeringGroup(policy: policy)
        self.udp = udp
        let first = udp ? try RawSocket.udp(port: 0, reusePort: true) : try RawSocket.reuseportListener(port: 0)
        port = try RawSocket.port(of: first)
        sockets = [first]
        for _ in 1..<members { sockets.append(udp ? try RawSocket.udp(port: port, reusePort: true) : try RawSocket.reuseportListener(port: port)) }
        for (index, fd) in sockets.enumerated() { try steering.memberJoined(fd, weight: weights?[index] ?? 1) }
    }

    func close() {
        steering.close()
        sockets.forEach(closeDescriptor)
        sockets = []
    }

    /// Which of `sockets` the member is.
    func index(of member: SteeringGroup.Member?) -> Int? {
        guard let member else { return nil }
        return sockets.firstIndex { (try? SocketCall.cookie($0)) == member.cookie }
    }

    /// Connects one client per source address 127.0.0.(10+i) and returns, per client, the listener that accepted it.
    func acceptedBy(sources: Range<Int>, sourcePort: (Int) -> UInt16 = { _ in 0 }) throws -> [Int] {
        var placement: [Int] = []
        for i in sources {
            let source = UInt32(0x7f00_0000 | UInt32(10 + i)).bigEndian
            let client = try RawSocket.connect(port: port, sourceAddress: source, sourcePort: sourcePort(i))
            defer { closeDescriptor(client) }
            var found: Int?
            for (index, listener) in sockets.enumerated() {
                let accepted = RawSocket.acceptQueued(listener)
                if !accepted.isEmpty { found = index }
                accepted.forEach(closeDescriptor)
            }
            placement.append(try #require(found))
        }
        return placement
    }

    /// Datagrams waiting on each member.
    func drain() -> [[[UInt8]]] { sockets.map(RawSocket.drainDatagrams) }
}

func clientAddress(_ i: Int) -> IPAddress { .v4(UInt32(0x7f00_0000 | UInt32(10 + i)).bigEndian) }

@Suite("StraitSteer: every policy on real sockets in a private namespace", kernelGate)
struct SteeringPolicyTests {
    @Test("consistent-hash on the client address: each client lands where the Maglev table says, every time")
    func consistentHashClientAddress() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .consistentHash(.clientAddress), members: 4, udp: false)
                defer { fixture.close() }
                let placement = try fixture.acceptedBy(sources: 0..<40)
                let again = try fixture.acceptedBy(sources: 0..<40)
                #expect(placement == again, "a client keeps its listener across connections")
                for (i, index) in placement.enumerated() {
                    let key = SteeringHash.key(.clientAddress, source: clientAddress(i), sourcePort: 0, destination: IPAddress("127.0.0.1")!, destinationPort: fixture.port)
                    #expect(fixture.index(of: fixture.steering.member(forKey: key)) == index, "client \(i)")
                }
                #expect(Set(placement).count == 4, "40 clients reach all 4 members")
                #expect(try fixture.steering.counters().selected == 80)
            }
        }
    }

    @Test("consistent-hash on the 4-tuple: placement follows source port too, as predicted")
    func consistentHashFourTuple() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .consistentHash(.fourTuple), members: 4, udp: false)
                defer { fixture.close() }
                let ports: (Int) -> UInt16 = { UInt16(41000 + $0) }
                let placement = try fixture.acceptedBy(sources: 0..<40, sourcePort: ports)
                for (i, index) in placement.enumerated() {
                    let key = SteeringHash.key(.fourTuple, source: clientAddress(i), sourcePort: ports(i), destination: IPAddress("127.0.0.1")!, destinationPort: fixture.port)
                    #expect(fixture.index(of: fixture.steering.member(forKey: key)) == index, "client \(i)")
                }
            }
        }
    }

    @Test("a member leaving moves only its own clients (consistent-hash)")
    func leaveMovesOnlyItsClients() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .consistentHash(.clientAddress), members: 4, udp: false)
                defer { fixture.close() }
                let before = try fixture.acceptedBy(sources: 0..<60)
                try fixture.steering.memberLeaving(fixture.sockets[2])
                let after = try fixture.acceptedBy(sources: 0..<60)
                for (b, a) in zip(before, after) {
                    if b == 2 { #expect(a != 2) } else { #expect(a == b, "a client of a staying member did not move") }
                }
            }
        }
    }

    @Test("payload: a session's 10,000 datagrams from changing source ports all reach one socket, the predicted one")
    func payloadSessionsStick() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .payload(offset: 4, length: 8, fallback: .kernelHash), members: 4, udp: true)
                defer { fixture.close() }
                let clients = try (0..<50).map { _ in try RawSocket.udp(port: 0, reusePort: false) }
                defer { clients.forEach(closeDescriptor) }
                let sessions = 16
                var receivedBy = [Int: Set<Int>](), counts = [Int: Int]()
                for round in 0..<(10_000 / 500) {
                    for i in 0..<500 {
                        let datagram = round * 500 + i
                        let session = datagram % sessions
                        var bytes: [UInt8] = [0xAA, 0xBB, 0xCC, 0xDD] + withUnsafeBytes(of: UInt64(session * 7919).bigEndian) { Array($0) }
                        bytes += Array("datagram \(datagram)".utf8)
                        try RawSocket.sendDatagram(clients[datagram % clients.count], bytes, toPort: fixture.port)
                    }
                    for (index, datagrams) in fixture.drain().enumerated() {
                        for datagram in datagrams {
                            let session = Int(datagram[4..<12].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) / 7919
                            receivedBy[session, default: []].insert(index)
                            counts[session, default: 0] += 1
                        }
                    }
                }
                #expect(counts.values.reduce(0, +) == 10_000)
                for session in 0..<sessions {
                    #expect(receivedBy[session]?.count == 1, "session \(session) reached sockets \(receivedBy[session] ?? [])")
                    let key = withUnsafeBytes(of: UInt64(session * 7919).bigEndian) { Array($0) }
                    #expect(receivedBy[session]?.first == fixture.index(of: fixture.steering.member(forKey: key)))
                }
                #expect(Set(receivedBy.values.compactMap(\.first)).count > 1, "16 sessions spread over more than one socket")
            }
        }
    }

    @Test("payload: short and empty datagrams go to the fallback member; with no fallback the kernel's hash takes them")
    func payloadFallback() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                for fallback in [SteeringPolicy.PayloadFallback.member(2), .kernelHash] {
                    let fixture = try GroupFixture(policy: .payload(offset: 4, length: 8, fallback: fallback), members: 4, udp: true)
                    defer { fixture.close() }
                    let client = try RawSocket.udp(port: 0, reusePort: false)
                    defer { closeDescriptor(client) }
                    let malformed: [[UInt8]] = [[], [1], [1, 2, 3, 4], Array(repeating: 7, count: 11)]
                    for _ in 0..<25 { for datagram in malformed { try RawSocket.sendDatagram(client, datagram, toPort: fixture.port) } }
                    let received = fixture.drain()
                    #expect(received.map(\.count).reduce(0, +) == 100, "no short datagram is lost")
                    if case .member(let position) = fallback { #expect(received[position].count == 100) }
                    #expect(try fixture.steering.counters().shortPayload == 100)
                    // A well-formed datagram after them is still steered by its key.
                    try RawSocket.sendDatagram(client, Array(repeating: 9, count: 12), toPort: fixture.port)
                    #expect(try fixture.steering.counters().selected == 1)
                    _ = fixture.drain()
                }
            }
        }
    }

    @Test("active-backup: all to the primary; when it closes, at once to the next; when that leaves, to the third")
    func activeBackup() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .activeBackup, members: 3, udp: false)
                defer { fixture.close() }
                #expect(Set(try fixture.acceptedBy(sources: 0..<20)) == [0])
                closeDescriptor(fixture.sockets[0])
                fixture.sockets[0] = try RawSocket.udp(port: 0, reusePort: false)  // a placeholder nobody connects to
                #expect(Set(try fixture.acceptedBy(sources: 0..<20)) == [1], "the backup takes over with no leave call")
                try fixture.steering.memberLeaving(fixture.sockets[1])
                #expect(Set(try fixture.acceptedBy(sources: 0..<20)) == [2])
                #expect(try fixture.steering.counters().unavailable == 0, "the program always found a live member itself")
            }
        }
    }

    @Test("active-active: datagrams spread in proportion to weights 1:2:3:2")
    func activeActiveWeights() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let weights = [1, 2, 3, 2]
                let fixture = try GroupFixture(policy: .activeActive, members: 4, udp: true, weights: weights)
                defer { fixture.close() }
                var counts = [Int](repeating: 0, count: 4)
                for _ in 0..<20 {
                    let clients = try (0..<200).map { _ in try RawSocket.udp(port: 0, reusePort: false) }
                    for client in clients { try RawSocket.sendDatagram(client, [1, 2, 3], toPort: fixture.port) }
                    clients.forEach(closeDescriptor)
                    for (index, datagrams) in fixture.drain().enumerated() { counts[index] += datagrams.count }
                }
                let total = Double(counts.reduce(0, +))
                #expect(total == 4000)
                for (index, weight) in weights.enumerated() {
                    #expect(abs(Double(counts[index]) / total - Double(weight) / 8) < 0.04, "member \(index): \(counts[index]) of \(total)")
                }
            }
        }
    }

    @Test("kernel: no program; the kernel's hash spreads flows over all members")
    func kernelHash() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: .kernel, members: 4, udp: true)
                defer { fixture.close() }
                let clients = try (0..<400).map { _ in try RawSocket.udp(port: 0, reusePort: false) }
                defer { clients.forEach(closeDescriptor) }
                for client in clients { try RawSocket.sendDatagram(client, [1], toPort: fixture.port) }
                let counts = fixture.drain().map(\.count)
                #expect(counts.reduce(0, +) == 400)
                #expect(counts.allSatisfy { $0 > 40 }, "\(counts)")
                #expect(try fixture.steering.counters() == SteeringCounters.init())
            }
        }
    }

    @Test("migration: connections queued on a listener that closes are placed by the program on a live one", arguments: [SteeringPolicy.activeBackup, .consistentHash(.fourTuple)])
    func migration(policy: SteeringPolicy) throws {
        try TestNamespace.with(migrateRequests: true) { namespace in
            try namespace.run {
                let fixture = try GroupFixture(policy: policy, members: 3, udp: false)
                defer { fixture.close() }
                #expect(fixture.steering.migrates)
                let clients = try (0..<60).map { _ in try RawSocket.connect(port: fixture.port) }
                defer { clients.forEach(closeDescriptor) }
                closeDescriptor(fixture.sockets[0])
                fixture.sockets[0] = try RawSocket.udp(port: 0, reusePort: false)
                let accepted = RawSocket.acceptQueued(fixture.sockets[1]) + RawSocket.acceptQueued(fixture.sockets[2])
                defer { accepted.forEach(closeDescriptor) }
                #expect(accepted.count == 60, "every queued connection survived the close")
                let counters = try fixture.steering.counters()
                if policy == .activeBackup {
                    #expect(counters.migrated == 60, "all 60 were queued on the primary and moved")
                } else {
                    #expect(counters.migrated > 0 && counters.migrated < 60, "only the closing member's share moved: \(counters.migrated)")
                }
            }
        }
    }
}
