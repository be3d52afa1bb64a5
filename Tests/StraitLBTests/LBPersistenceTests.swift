import Foundation
import StraitBPF
import StraitLB
import StraitSystem
import StraitTestSupport
import Testing

/// A persistent ``LoadBalancer`` (what the agent runs) on a private cgroup, pins and record in the
/// test's own folders: it stays attached when closed, is adopted without a write, and is removed whole.
@Suite("strait lb: a persistent balancer outlives its owner and is adopted", .serialized, kernelGate)
struct LBPersistenceTests {
    static func services(backend: String) -> [LBServiceConfig] {
        [
            LBServiceConfig(name: "web", address: IPAddress("198.18.0.10")!, port: 80, backends: [
                LBBackendConfig(address: IPAddress(backend)!, port: 8080, weight: 2), LBBackendConfig(address: IPAddress("198.18.1.2")!, port: 8080),
            ]),
            LBServiceConfig(name: "dns", address: IPAddress("2001:db8::53")!, port: 53, transport: .udp, policy: .random, backends: [
                LBBackendConfig(address: IPAddress("2001:db8::1:1")!, port: 53),
            ]),
        ]
    }

    @Test("closed, it stays attached; adopted, the same tables need no write; a change is one flip; removed, nothing is left")
    func adoptAndRemove() throws {
        try TestCgroup.with { cgroup in
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-lb")).path
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let persistence = LBPersistence(pinDirectory: cgroup.pinDirectory + "/lb", recordFile: folder + "/tables.json")
            defer { try? persistence.remove() }

            let first = try LoadBalancer(cgroup: cgroup.cgroup, capacity: 8, persistingIn: persistence)
            #expect(try first.apply(Self.services(backend: "198.18.1.1")) == 2)
            let table = try #require(first.table(service: "web"))
            first.close()
            let connectLink = try BPFLink.open(pinned: persistence.pinDirectory + "/links/lb_connect4")
            let attachedTo = try connectLink.cgroupID()
            #expect(attachedTo != nil && attachedTo != 0, "still attached through its pin")

            #expect(LoadBalancer.adopt(cgroup: Cgroup(path: cgroup.cgroup.path + "/.."), persistence: persistence) == nil, "not on another cgroup")
            let adopted = try #require(LoadBalancer.adopt(cgroup: cgroup.cgroup, persistence: persistence))
            #expect(adopted.capacity == 8)
            #expect(try adopted.apply(Self.services(backend: "198.18.1.1")) == 0, "the kernel already holds exactly this")
            #expect(adopted.table(service: "web") == table)
            #expect(adopted.kernelDifferences().isEmpty, "\(adopted.kernelDifferences())")
            #expect(try adopted.apply(Self.services(backend: "198.18.1.3")) == 1, "one service changed")
            #expect(adopted.table(service: "web") != table)
            #expect(try adopted.snapshot().services.map(\.name) == ["web", "dns"])
            adopted.close()

            try persistence.remove()
            #expect((try connectLink.cgroupID()) ?? 0 == 0, "detached, though this test still holds a descriptor")
            try connectLink.close()
            #expect(!FileManager.default.fileExists(atPath: persistence.pinDirectory))
            #expect(!FileManager.default.fileExists(atPath: persistence.recordFile))
            #expect(LoadBalancer.adopt(cgroup: cgroup.cgroup, persistence: persistence) == nil)
        }
    }
}
