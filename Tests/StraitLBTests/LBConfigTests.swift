import StraitLB
import StraitSystem
import Testing

@Suite("strait lb configuration and tables (no kernel)")
struct LBConfigTests {
    @Test("a full configuration reads back field by field")
    func reads() throws {
        let config = try LBConfigLoader.parse("""
            cgroup: /sys/fs/cgroup/unified/apps
            metrics: 127.0.0.1:9300
            services:
              - name: web
                address: 198.18.0.10:80
                policy: random
                backends:
                  - { address: 198.18.1.1:8080, weight: 2 }
                  - 198.18.1.2:8080
                health_check: { interval: 1s, timeout: 500ms, rise: 1, fall: 2 }
              - name: dns
                address: "[2001:db8::10]:53"
                protocol: udp
                backends: ["[2001:db8::1:1]:53"]
            """, file: "lb.yaml")
        #expect(config.cgroup == "/sys/fs/cgroup/unified/apps")
        #expect(config.services.count == 2)
        #expect(config.services[0].policy == .random)
        #expect(config.services[0].backends.map(\.weight) == [2, 1])
        #expect(config.services[0].healthCheck?.fall == 2)
        #expect(config.services[1].transport == .udp)
        #expect(config.services[1].address == IPAddress("2001:db8::10"))
    }

    @Test("mistakes are reported as FILE:LINE:COLUMN with what was expected", arguments: [
        ("cgroup: /x\nservices:\n  - name: a\n    adress: 198.18.0.1:80\n", "lb.yaml:4:5: unknown key `adress`"),
        ("cgroup: /x\nservices:\n  - name: a\n    address: 198.18.0.1:80\n    backends: [\"[2001:db8::1]:80\"]\n", "lb.yaml:5:16: expected an IPv4 backend"),
        ("cgroup: /x\nservices:\n  - name: a\n    address: 198.18.0.1:80\n    policy: roundrobin\n    backends: [198.18.1.1:80]\n", "lb.yaml:5:13: expected `policy` as one of maglev, random"),
        ("cgroup: x\nservices: []\n", "lb.yaml:1:9: expected `cgroup` as an absolute path"),
    ])
    func errors(_ yaml: String, _ prefix: String) {
        do {
            _ = try LBConfigLoader.parse(yaml, file: "lb.yaml")
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect(error.description.hasPrefix(prefix), "got \(error.description)")
        }
    }

    @Test("weighted random tables give each backend its share of entries")
    func randomShares() {
        let table = LBTable.build([.init(id: 1, weight: 1), .init(id: 2, weight: 3)], policy: .random)
        #expect(table.count == LBTable.size)
        let ones = table.filter { $0 == 1 }.count
        #expect(abs(ones - LBTable.size / 4) <= 1)
    }
}
