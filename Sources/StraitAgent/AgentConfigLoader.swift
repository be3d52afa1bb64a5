import Foundation
import StraitAccel
import StraitBPF
import StraitDrop
import StraitLB
import StraitNet
import StraitProxy
import StraitSystem
import Yams

/// Every mistake found in an agent file, each located (`FILE:LINE:COLUMN: what was expected`).
/// The file is rejected whole: the agent applies nothing of it.
public struct AgentConfigError: Error, CustomStringConvertible {
    /// In file order. Each section is checked on its own, so a mistake in `accel` does not hide one
    /// in `drop`; the `proxy` and `lb` sections report their first mistake each (their own loaders
    /// stop there).
    public let problems: [ProxyConfigError]

    /// Problems as found; ``AgentConfigLoader`` sorts them by position.
    public init(problems: [ProxyConfigError]) { self.problems = problems }

    /// One problem a line, `FILE:LINE:COLUMN: message`.
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Reads and checks the agent's file. Unknown keys are errors at every level.
///
/// ```yaml
/// metrics: 127.0.0.1:9478              # /metrics, /healthz, /readyz
/// accel:
///   cgroup: /sys/fs/cgroup/kubepods.slice
///   ports: [6379]                      # empty or absent: every port
///   exclude_ports: [873]
///   cidrs: [127.0.0.0/8, "::1/128"]
///   mode: adaptive                     # adaptive | always
///   bulk_bytes: 16384
/// drop:
///   interfaces:
///     - eth0                           # native XDP in the agent's namespace
///     - { name: veth1, mode: generic, netns: lab }
///   mode: block                        # block | allow (absent with rules_file: the file's `mode` line)
///   rules: [198.18.0.0/15, tcp/23, "mac 02:00:5e:00:53:01"]
///   # rules_file: drop.rules           # instead of `rules`; relative to this file
///   protect: [192.0.2.10]              # never start dropping these
/// proxy:                               # `strait proxy`'s schema, unchanged
///   listeners: [{ name: web, bind: 127.0.0.1:6000, cluster: web }]
///   clusters: [{ name: web, upstreams: [127.0.0.1:5201] }]
/// lb:                                  # `strait lb --config`'s schema, without `metrics`
///   cgroup: /sys/fs/cgroup/kubepods.slice
///   services:
///     - { name: web, address: 198.18.0.10:80, backends: [198.18.1.1:8080, 198.18.1.2:8080] }
/// ```
public enum AgentConfigLoader {
    static let topKeys = ["metrics", "accel", "drop", "proxy", "lb"]

    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(AgentConfigError) -> AgentConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AgentConfigError(problems: [ProxyConfigError(file: path, line: 0, column: 0, message: "cannot read the file")])
        }
        let directory = (path as NSString).deletingLastPathComponent
        return try parse(String(decoding: data, as: UTF8.self), file: path, directory: directory.isEmpty ? "." : directory)
    }

    /// Checks YAML text; `file` names it in errors and `directory` resolves a relative `rules_file`.
    public static func parse(_ yaml: String, file: String, directory: String = ".") throws(AgentConfigError) -> AgentConfig {
        var checker = Checker(reader: ConfigNodeReader(file: file), directory: directory)
        let composed: Node?
        do { composed = try ProxyConfigLoader.compose(yaml, file: file) } catch { throw AgentConfigError(problems: [error]) }
        guard let root = composed else {
            throw AgentConfigError(problems: [ProxyConfigError(file: file, line: 1, column: 1, message: "expected a mapping with sections \(topKeys.joined(separator: ", ")), found an empty document")])
        }
        let config = checker.config(root)
        guard checker.problems.isEmpty, let config else {
            throw AgentConfigError(problems: checker.problems.sorted { ($0.line, $0.column) < ($1.line, $1.column) })
        }
        return config
    }
}

/// Walks the tree, collecting every problem instead of stopping at the first.
private struct Checker {
    let reader: ConfigNodeReader
    let directory: String
    var problems: [ProxyConfigError] = []

    /// Runs one check; a failure is recorded and nil returned, so the walk goes on.
    mutating func check<T>(_ body: () throws(ProxyConfigError) -> T) -> T? {
        do { return try body() } catch {
            problems.append(error)
            return nil
        }
    }

    /// Keys of a mapping, where unknown keys are recorded one by one (the known ones are still read).
    mutating func fields(_ node: Node, _ what: String, allowed: [String]) -> [String: Node]? {
        guard let mapping = node.mapping else {
            problems.append(reader.error(node, "expected \(what) as a mapping of \(allowed.joined(separator: ", "))"))
            return nil
        }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string, allowed.contains(name) else {
                problems.append(reader.error(key, "unknown key `\(key.string ?? "?")` in \(what); expected one of \(allowed.joined(separator: ", "))"))
                continue
            }
            result[name] = value
        }
        return result
    }

    mutating func config(_ root: Node) -> AgentConfig? {
        guard let top = fields(root, "the agent file", allowed: AgentConfigLoader.topKeys) else { return nil }
        var config = AgentConfig()
        let reader = self.reader
        if let node = top["metrics"], let address = check({ () throws(ProxyConfigError) in try reader.address(node, "`metrics`") }) {
            config.metricsAddress = address
        }
        if let node = top["accel"] { config.accel = accel(node) }
        if let node = top["drop"] { config.drop = drop(node) }
        if let node = top["proxy"] {
            config.proxy = check { () throws(ProxyConfigError) in try ProxyConfigLoader.config(from: node, file: reader.file) }
        }
        if let node = top["lb"] {
            config.lb = check { () throws(ProxyConfigError) in try LBConfigLoader.section(from: node, file: reader.file) }
        }
        return config
    }

    // MARK: accel

    mutating func accel(_ node: Node) -> AccelSection? {
        let what = "`accel`"
        guard let entries = fields(node, what, allowed: ["cgroup", "ports", "exclude_ports", "cidrs", "mode", "bulk_bytes"]) else { return nil }
        var policy = AccelPolicy()
        let reader = self.reader
        let cgroup = check { () throws(ProxyConfigError) -> String in
            let value = try reader.required(entries, "cgroup", in: node, what)
            let path = try reader.string(value, "`cgroup` (a cgroup v2 directory)")
            guard path.hasPrefix("/") else { throw reader.error(value, "expected `cgroup` as an absolute path to a cgroup v2 directory, such as /sys/fs/cgroup/kubepods.slice") }
            return path
        }
        if let value = entries["ports"] { policy.ports = ports(value, "`ports`") }
        if let value = entries["exclude_ports"] { policy.excludePorts = ports(value, "`exclude_ports`") }
        if let value = entries["cidrs"] {
            policy.cidrs = items(value, "`cidrs`").compactMap { item in
                check { () throws(ProxyConfigError) -> String in
                    guard let text = item.scalar?.string, let prefix = IPPrefix(text) else {
                        throw reader.error(item, "expected an address prefix such as 127.0.0.0/8 or ::1/128")
                    }
                    return prefix.description
                }
            }
        }
        if let value = entries["mode"] {
            if let mode = check({ () throws(ProxyConfigError) -> AccelMode in try reader.choice(value, "`mode`") }) { policy.adaptive = mode == .adaptive }
        }
        if let value = entries["bulk_bytes"] {
            if let bytes = check({ () throws(ProxyConfigError) in try reader.integer(value, "`bulk_bytes`", range: 1...(1 << 30)) }) { policy.bulkBytes = UInt32(bytes) }
        }
        policy.ports.sort()
        policy.excludePorts.sort()
        policy.cidrs.sort()
        return cgroup.map { AccelSection(cgroup: $0, policy: policy) }
    }

    enum AccelMode: String, CaseIterable { case adaptive, always }

    /// A list, possibly empty (`[]` clears a filter).
    mutating func items(_ node: Node, _ what: String) -> [Node] {
        guard let sequence = node.sequence else {
            problems.append(reader.error(node, "expected \(what) as a list"))
            return []
        }
        return Array(sequence)
    }

    mutating func ports(_ node: Node, _ what: String) -> [UInt16] {
        let reader = self.reader
        return items(node, what).compactMap { item in
            check { () throws(ProxyConfigError) in UInt16(try reader.integer(item, "a port in \(what)", range: 1...65535)) }
        }
    }

    // MARK: drop

    mutating func drop(_ node: Node) -> DropSection? {
        let what = "`drop`"
        guard let entries = fields(node, what, allowed: ["interfaces", "mode", "rules", "rules_file", "protect"]) else { return nil }
        let reader = self.reader
        var interfaces: [DropInterface] = []
        if let list = check({ () throws(ProxyConfigError) in try reader.list(try reader.required(entries, "interfaces", in: node, what), "`interfaces`") }) {
            for item in list {
                guard let interface = self.interface(item) else { continue }
                if interfaces.contains(where: { $0.name == interface.name }) {
                    // Pins are named by interface and mode only: one name, one attachment.
                    problems.append(reader.error(item, "a second entry for interface `\(interface.name)`; expected each interface once (also across namespaces)"))
                    continue
                }
                interfaces.append(interface)
            }
        }
        var mode: DropMode?
        if let value = entries["mode"] { mode = check { () throws(ProxyConfigError) -> DropMode in try reader.choice(value, "`mode`") } }
        var set = DropRuleSet(mode: mode ?? .block)
        var rulesFile: String?
        switch (entries["rules"], entries["rules_file"]) {
        case (.some(let rules), .some):
            problems.append(reader.error(rules, "expected either `rules` or `rules_file`, not both"))
        case (.some(let rules), nil):
            var seen = Set<DropRule>()
            for item in items(rules, "`rules`") {
                let rule = check { () throws(ProxyConfigError) -> DropRule in
                    guard let text = item.scalar?.string else { throw reader.error(item, "expected a rule as a string") }
                    do { return try DropRule(parsing: text) } catch { throw reader.error(item, "\(error)") }
                }
                if let rule, seen.insert(rule).inserted { set.rules.append(rule) }
            }
        case (nil, .some(let fileNode)):
            if let value = entries["mode"] {
                problems.append(reader.error(value, "with `rules_file`, set the mode in that file (a line `mode allow`), not here"))
            }
            let directory = self.directory
            if let loaded = check({ () throws(ProxyConfigError) -> (String, DropRuleSet) in
                let name = try reader.string(fileNode, "`rules_file`")
                let path = name.hasPrefix("/") ? name : directory + "/" + name
                guard let data = FileManager.default.contents(atPath: path) else { throw reader.error(fileNode, "cannot read the rules file \(path)") }
                do { return (path, try DropRuleSet(parsingFile: String(decoding: data, as: UTF8.self))) } catch {
                    throw reader.error(fileNode, "in the rules file \(path): \(error)")
                }
            }) {
                (rulesFile, set) = loaded
            }
        case (nil, nil):
            break  // no rules: in block mode nothing is dropped; in allow mode everything is
        }
        var protect: [IPAddress] = []
        if let value = entries["protect"] {
            protect = items(value, "`protect`").compactMap { item in
                check { () throws(ProxyConfigError) -> IPAddress in
                    guard let text = item.scalar?.string, let address = IPAddress(text) else { throw reader.error(item, "expected an IP address") }
                    return address
                }
            }
            for address in protect where !set.admits(source: address, tcpPort: nil) {
                problems.append(reader.error(value, "the rules would drop the protected address \(address); change the rules or `protect`"))
            }
        }
        return DropSection(interfaces: interfaces, rules: set, rulesFile: rulesFile, protect: protect)
    }

    mutating func interface(_ node: Node) -> DropInterface? {
        let reader = self.reader
        if let scalar = node.scalar {
            guard Self.isInterfaceName(scalar.string) else {
                problems.append(reader.error(node, "expected an interface name (1-15 characters, no `/` or spaces)"))
                return nil
            }
            return DropInterface(name: scalar.string)
        }
        guard let entries = fields(node, "an interface", allowed: ["name", "mode", "netns"]) else { return nil }
        return check { () throws(ProxyConfigError) -> DropInterface in
            let nameNode = try reader.required(entries, "name", in: node, "an interface")
            let name = try reader.string(nameNode, "the interface's `name`")
            guard Self.isInterfaceName(name) else { throw reader.error(nameNode, "expected an interface name (1-15 characters, no `/` or spaces)") }
            var interface = DropInterface(name: name)
            if let value = entries["mode"] { interface.mode = try reader.choice(value, "`mode` (native: in the driver; generic: any driver)") }
            if let value = entries["netns"] {
                let netns = try reader.string(value, "`netns` (a name `ip netns` lists)")
                guard !netns.contains("/") else { throw reader.error(value, "expected `netns` as a name under /var/run/netns, not a path") }
                interface.netns = netns
            }
            return interface
        }
    }

    static func isInterfaceName(_ name: String) -> Bool {
        (1...15).contains(name.utf8.count) && !name.contains("/") && !name.contains(" ") && name != "." && name != ".."
    }
}
