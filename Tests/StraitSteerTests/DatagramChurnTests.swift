import Atomics
import Foundation
import StraitNet
import StraitSteer
import StraitSystem
import StraitTestSupport
import Testing

@Suite("StraitSteer: UDP groups under member churn", kernelGate)
struct DatagramChurnTests {
    @Test("members join and leave while sessions send: every datagram is read, none steered to a closed socket")
    func churnUnderLoad() throws {
        try TestNamespace.with { namespace in
            let group = try EventLoopGroup(loopCount: 2)
            defer { group.shutdown() }
            let steering = try SteeringGroup(policy: .payload(offset: 0, length: 4, fallback: .kernelHash))
            defer { steering.close() }
            let received = ManagedAtomic<Int>(0)
            let datagrams = try namespace.run {
                try DatagramGroup(address: .loopback(port: 0), group: group, socketCount: 4, steering: steering) { _, batch in
                    received.wrappingIncrement(by: batch.count, ordering: .relaxed)
                }
            }
            defer { datagrams.close() }
            let port = datagrams.address.port!
            let sent = ManagedAtomic<Int>(0)
            let stop = ManagedAtomic<Bool>(false)
            let sender = Thread {
                _ = try? namespace.run {
                    let clients = try (0..<32).map { _ in try RawSocket.udp(port: 0, reusePort: false) }
                    defer { clients.forEach(closeDescriptor) }
                    var n = 0
                    while !stop.load(ordering: .relaxed) && n < 200_000 {
                        let session = UInt32(n % 64).bigEndian
                        try RawSocket.sendDatagram(clients[n % clients.count], withUnsafeBytes(of: session) { Array($0) } + [1, 2, 3], toPort: port)
                        sent.wrappingIncrement(ordering: .relaxed)
                        n += 1
                        if n % 200 == 0 { usleep(1000) }
                    }
                }
            }
            sender.start()
            var churns = 0
            for round in 0..<10 {
                usleep(20_000)
                try namespace.run { _ = try datagrams.addMember() }
                usleep(20_000)
                let members = datagrams.members
                try datagrams.removeMember(members[round % members.count])
                churns += 1
            }
            stop.store(true, ordering: .relaxed)
            while !sender.isFinished { usleep(1000) }
            let deadline = Date().addingTimeInterval(2)
            while received.load(ordering: .relaxed) < sent.load(ordering: .relaxed) && Date() < deadline { usleep(2000) }
            let total = sent.load(ordering: .relaxed)
            #expect(churns == 10)
            #expect(total > 5000, "load ran")
            #expect(received.load(ordering: .relaxed) == total, "every datagram read by a live member")
            #expect(datagrams.members.count == 4)
            #expect(steering.members.count == 4)
            #expect(try steering.counters().unavailable == 0, "the program never picked a closed member")
        }
    }

    @Test("the datagram API: recvmmsg batches in, sendmmsg echoes back to each peer, byte for byte")
    func echoThroughBatches() throws {
        try TestNamespace.with { namespace in
            let group = try EventLoopGroup(loopCount: 2)
            defer { group.shutdown() }
            let datagrams = try namespace.run {
                try DatagramGroup(address: .loopback(port: 0), group: group, socketCount: 2) { socket, batch in
                    for slot in 0..<batch.count { batch.prepareEcho(slot) }
                    socket.send(batch)
                }
            }
            defer { datagrams.close() }
            try namespace.run {
                let client = try RawSocket.udp(port: 0, reusePort: false)
                defer { closeDescriptor(client) }
                let sent = (0..<200).map { i in Array("datagram \(i) ".utf8) + [UInt8](repeating: UInt8(i % 251), count: i % 1400) }
                for datagram in sent { try RawSocket.sendDatagram(client, datagram, toPort: datagrams.address.port!) }
                var echoed: [[UInt8]] = []
                let deadline = Date().addingTimeInterval(3)
                while echoed.count < sent.count && Date() < deadline {
                    echoed += RawSocket.drainDatagrams(client)
                    usleep(1000)
                }
                #expect(echoed.count == sent.count)
                #expect(Set(echoed) == Set(sent), "every datagram came back unchanged")
            }
            #expect(datagrams.members.map(\.received).reduce(0, +) == 200)
        }
    }
}
