import Foundation
import Logging
import StraitLB
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("strait lb: health checks take a dead backend out of new connections", .serialized, kernelGate)
struct LBHealthTests {
    @Test("a backend whose listener closes is marked down and receives no new connection; the other gets them all")
    func deadBackendGetsNothing() throws {
        try TestCgroup.with { cgroup in
            // Backends on loopback, in this namespace: the checker's probes are made here too.
            let alive = try TestListener(.ipv4)
            let dying = try TestListener(.ipv4)
            let loopback = IPAddress("127.0.0.1")!
            var service = LBServiceConfig(
                name: "web", address: IPAddress("198.18.0.10")!, port: 80,
                backends: [LBBackendConfig(address: loopback, port: alive.port), LBBackendConfig(address: loopback, port: dying.port)])
            service.healthCheck = HealthCheck(interval: .milliseconds(50), timeout: .milliseconds(40), rise: 1, fall: 1)
            let balancer = try LoadBalancer(cgroup: cgroup.cgroup, capacity: 8)
            defer { balancer.close() }
            try balancer.apply([service])
            let group = try EventLoopGroup(loopCount: 1)
            defer { group.shutdown() }
            let seen = DownSet()
            let checker = LBHealthChecker(group: group, logger: Logger(label: "test")) { [service] down in
                try? balancer.apply([service], down: down)
                seen.store(down)
            }
            checker.configure([service])
            defer { checker.stop() }

            dying.socket.close()
            let gone = LBBackendRef(service: "web", backend: service.backends[1].endpoint)
            let deadline = SocketCall.monotonicNanoseconds() + 5_000_000_000
            while !seen.load().contains(gone) && SocketCall.monotonicNanoseconds() < deadline { usleep(20_000) }
            #expect(seen.load() == [gone], "the closed backend is down, the other up")
            #expect(try balancer.snapshot().services[0].backends.map(\.up) == [true, false])

            for _ in 0..<20 {
                let fd = try cgroup.inside { try systemCall("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) } }
                defer { close(fd) }
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = UInt16(80).bigEndian
                address.sin_addr.s_addr = IPAddress("198.18.0.10")!.bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                #expect(result == 0, "connect reached the live backend (errno \(errno))")
                let accepted = accept(alive.socket.fd, nil, nil)
                #expect(accepted >= 0)
                if accepted >= 0 { close(accepted) }
            }
        }
    }
}

final class DownSet: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Set<LBBackendRef> = []
    func store(_ next: Set<LBBackendRef>) { lock.withLock { value = next } }
    func load() -> Set<LBBackendRef> { lock.withLock { value } }
}
