import Foundation
import StraitSteer
import StraitSystem
import StraitTestSupport
import Testing

/// A UDP socket bound to [::1]:`port` (non-blocking; `SO_REUSEPORT` when asked).
func udp6(port: UInt16, reusePort: Bool) throws -> CInt {
    let fd = try SocketCall.socket(domain: AF_INET6, type: CInt(SOCK_DGRAM.rawValue))
    do {
        if reusePort { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_addr = in6addr_loopback
        address.sin6_port = port.bigEndian
        _ = try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                try systemCall("bind") { bind(fd, raw, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        return fd
    } catch {
        closeDescriptor(fd)
        throw error
    }
}

func port6(of fd: CInt) throws -> UInt16 {
    try SocketCall.localAddress(of: fd).port ?? 0
}

@Suite("StraitSteer: IPv6", kernelGate)
struct IPv6SteeringTests {
    @Test("consistent-hash on the 4-tuple over IPv6: each datagram lands where the Swift mirror of the hash says")
    func fourTupleIPv6() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let steering = try SteeringGroup(policy: .consistentHash(.fourTuple))
                defer { steering.close() }
                let first = try udp6(port: 0, reusePort: true)
                let port = try port6(of: first)
                let members = [first] + (try (1..<4).map { _ in try udp6(port: port, reusePort: true) })
                defer { members.forEach(closeDescriptor) }
                for fd in members { try steering.memberJoined(fd, weight: 1) }
                let loopback = IPAddress("::1")!
                var placed = Set<Int>()
                for i in 0..<40 {
                    let sourcePort = UInt16(42000 + i)
                    let client = try udp6(port: sourcePort, reusePort: false)
                    defer { closeDescriptor(client) }
                    var destination = sockaddr_in6()
                    destination.sin6_family = sa_family_t(AF_INET6)
                    destination.sin6_addr = in6addr_loopback
                    destination.sin6_port = port.bigEndian
                    let payload: [UInt8] = [1, 2, 3]
                    _ = try withUnsafePointer(to: &destination) { pointer in
                        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                            try systemCall("sendto") { sendto(client, payload, payload.count, 0, raw, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
                        }
                    }
                    let receivedBy = members.indices.filter { !RawSocket.drainDatagrams(members[$0]).isEmpty }
                    let key = SteeringHash.key(.fourTuple, source: loopback, sourcePort: sourcePort, destination: loopback, destinationPort: port)
                    let expected = try #require(steering.member(forKey: key))
                    #expect(receivedBy.count == 1)
                    #expect(try receivedBy.first.map { try SocketCall.cookie(members[$0]) } == expected.cookie, "client port \(sourcePort)")
                    placed.formUnion(receivedBy)
                }
                #expect(placed.count > 1)
                #expect(try steering.counters().selected == 40)
            }
        }
    }
}
