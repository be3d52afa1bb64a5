import Foundation
import StraitAccel
import StraitAgent
import StraitDrop
import StraitLB
import Testing

@Suite("Agent file")
struct AgentConfigTests {
    @Test("a full file checks, with the proxy subtree in its own schema")
    func fullFile() throws {
        let yaml = """
            metrics: 127.0.0.1:9478
            accel:
              cgroup: /sys/fs/cgroup/kubepods.slice
              ports: [6379, 80]
              cidrs: [127.0.0.1/8]
              mode: always
            drop:
              interfaces:
                - eth0
                - { name: veth1, mode: generic, netns: lab }
              mode: allow
              rules: [198.18.0.0/15, tcp/22, 198.18.0.0/15]
            proxy:
              listeners: [{ name: web, bind: 127.0.0.1:6000, cluster: web }]
              clusters: [{ name: web, upstreams: [127.0.0.1:5201] }]
            """
        let config = try AgentConfigLoader.parse(yaml, file: "strait.yaml")
        #expect(config.accel?.cgroup == "/sys/fs/cgroup/kubepods.slice")
        #expect(config.accel?.policy.ports == [80, 6379])
        #expect(config.accel?.policy.cidrs == ["127.0.0.0/8"])
        #expect(config.accel?.policy.adaptive == false)
        #expect(config.drop?.interfaces == [DropInterface(name: "eth0"), DropInterface(name: "veth1", mode: .generic, netns: "lab")])
        #expect(config.drop?.rules.mode == .allow)
        #expect(config.drop?.rules.rules.count == 2)
        #expect(config.proxy?.listeners.first?.name == "web")
    }

    @Test("every problem is reported, each at its FILE:LINE:COLUMN, unknown keys included")
    func everyProblem() {
        let yaml = """
            metrics: nowhere
            accel:
              cgroup: relative/path
              portz: [1]
            drop:
              interfaces: [eth0, eth0]
              rules: [198.18.0.0/99]
            proxy:
              listeners: [{ name: web, bind: 127.0.0.1:6000, cluster: nope }]
              clusters: [{ name: web, upstreams: [127.0.0.1:5201] }]
            lbx: {}
            """
        #expect {
            try AgentConfigLoader.parse(yaml, file: "f.yaml")
        } throws: { error in
            guard let error = error as? AgentConfigError else { return false }
            let lines = error.description.split(separator: "\n").map(String.init)
            let expected = ["f.yaml:1:10:", "f.yaml:3:11:", "f.yaml:4:3: unknown key `portz`", "f.yaml:6:22:", "f.yaml:7:11:", "f.yaml:9:", "f.yaml:11:1: unknown key `lbx`"]
            return lines.count == expected.count && zip(lines, expected).allSatisfy { $0.hasPrefix($1) }
        }
    }

    @Test("a syntax error is located")
    func syntax() {
        #expect {
            try AgentConfigLoader.parse("accel: [unclosed\n", file: "s.yaml")
        } throws: { error in
            (error as? AgentConfigError)?.problems.first.map { $0.file == "s.yaml" && $0.line >= 1 && $0.message.hasPrefix("invalid YAML") } ?? false
        }
    }

    @Test("rules_file is read relative to the agent file; its mode line sets the mode")
    func rulesFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("strait-agent-\(getpid())-rules").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "mode allow\n198.18.0.0/15\n".write(toFile: directory + "/drop.rules", atomically: true, encoding: .utf8)
        let config = try AgentConfigLoader.parse("drop:\n  interfaces: [eth0]\n  rules_file: drop.rules\n", file: "a.yaml", directory: directory)
        #expect(config.drop?.rules == DropRuleSet(mode: .allow, rules: [try DropRule(parsing: "198.18.0.0/15")]))
        #expect {
            try AgentConfigLoader.parse("drop:\n  interfaces: [eth0]\n  rules_file: missing.rules\n", file: "a.yaml", directory: directory)
        } throws: { error in (error as? AgentConfigError)?.problems.first?.line == 3 }
    }

    @Test("an lb section is `strait lb --config`'s schema, read by its loader; `metrics` and its mistakes are located")
    func lbSection() throws {
        let yaml = """
            lb:
              cgroup: /sys/fs/cgroup/kubepods.slice
              services:
                - name: web
                  address: 198.18.0.10:80
                  policy: random
                  backends: [{ address: 198.18.1.1:8080, weight: 3 }, 198.18.1.2:8080]
                  health_check: { interval: 2s, timeout: 1s }
                - { name: dns, address: "[2001:db8::53]:53", protocol: udp, backends: ["[2001:db8::1:1]:53"] }
            """
        let config = try AgentConfigLoader.parse(yaml, file: "strait.yaml")
        let lb = try #require(config.lb)
        #expect(lb == (try LBConfigLoader.parse(yaml.replacingOccurrences(of: "lb:\n", with: "").split(separator: "\n").map { $0.dropFirst(2) }.joined(separator: "\n"), file: "strait.yaml")))
        #expect(lb.services.map(\.name) == ["web", "dns"])
        #expect(lb.services[0].backends.map(\.weight) == [3, 1])
        #expect(lb.services[1].transport == .udp)
        #expect(lb.metricsAddress == nil)

        let problems: [(text: String, at: String, says: String)] = [
            ("lb:\n  cgroup: /x\n  metrics: 127.0.0.1:9300\n  services: []\n", "f.yaml:3:3: ", "`metrics` is not set per part here"),
            ("lb:\n  cgroup: /x\n  servics: []\n", "f.yaml:3:3: ", "unknown key `servics`"),
            ("lb:\n  cgroup: /x\n  services:\n    - { name: a, address: 198.18.0.10:80, backends: [\"[2001:db8::1]:80\"] }\n", "f.yaml:4:54: ", "expected an IPv4 backend"),
        ]
        for problem in problems {
            #expect {
                try AgentConfigLoader.parse(problem.text, file: "f.yaml")
            } throws: { error in
                guard let error = error as? AgentConfigError else { return false }
                return error.problems.count == 1 && error.description.hasPrefix(problem.at) && error.description.contains(problem.says)
            }
        }
    }
}
