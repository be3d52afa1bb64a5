import Foundation
import StraitNet
import Yams

/// A configuration mistake, located: `file:line:column: message`, where the message says what
/// was expected. Line and column are 1-based, as editors show them.
public struct ProxyConfigError: Error, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Reads a ``ProxyConfig`` from YAML, checking every field and reporting the first mistake with
/// its position. Unknown keys are errors too (a misspelt `helth_check` must not be ignored).
///
/// ```yaml
/// listeners:
///   - name: web
///     bind: 127.0.0.1:6000
///     cluster: backend
///     datapath: auto            # auto | skmsg | sockmap | splice | copy
///     connect_timeout: 2s
///     idle_timeout: 1h
///     max_connections: 10000
/// clusters:
///   - name: backend
///     balance: round_robin      # round_robin | least_connections | consistent_hash
///     upstreams:
///       - { address: 127.0.0.1:5201, weight: 2 }
///       - 127.0.0.1:5202
///     health_check: { interval: 2s, timeout: 1s, rise: 2, fall: 3 }
/// metrics: 127.0.0.1:9100
/// drain_timeout: 30s
/// access_log: true
/// endpoints_cgroup: /sys/fs/cgroup/unified/apps   # local endpoints that may use skmsg
/// ```
public enum ProxyConfigLoader {
    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(ProxyConfigError) -> ProxyConfig {
        try parse(try text(path: path), file: path)
    }

    /// Checks YAML text; `file` names it in errors.
    public static func parse(_ yaml: String, file: String) throws(ProxyConfigError) -> ProxyConfig {
        try Reader(file: file).config(try root(yaml, file: file, expected: "a mapping with `listeners` and `clusters`"))
    }

    /// The text of the file at `path` (shared with the other YAML configurations of this package).
    package static func text(path: String) throws(ProxyConfigError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ProxyConfigError(file: path, line: 0, column: 0, message: "cannot read the file")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// The document's root node; a syntax error or an empty document is located in `file`.
    package static func root(_ yaml: String, file: String, expected: String) throws(ProxyConfigError) -> Node {
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                throw ProxyConfigError(file: file, line: 1, column: 1, message: "expected \(expected), found an empty document")
            }
            return node
        } catch let error as ProxyConfigError {
            throw error
        } catch let error as YamlError {
            throw syntaxError(error, file: file)
        } catch {
            throw ProxyConfigError(file: file, line: 0, column: 0, message: "\(error)")
        }
    }

    static func syntaxError(_ error: YamlError, file: String) -> ProxyConfigError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return ProxyConfigError(file: file, line: mark.line, column: mark.column, message: "invalid YAML: \(problem)")
        default:
            return ProxyConfigError(file: file, line: 0, column: 0, message: "invalid YAML: \(error)")
        }
    }
}

/// Walks the node tree; every failure carries the node's mark. Its typed readers are shared, within
/// this package, by the other YAML configurations (`strait lb`).
package struct Reader {
    package let file: String

    package init(file: String) { self.file = file }

    package func error(_ node: Node, _ message: String) -> ProxyConfigError {
        ProxyConfigError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, message: message)
    }

    /// The mapping's entries by key, after checking that every key is one of `allowed`.
    package func fields(_ node: Node, _ what: String, allowed: [String]) throws(ProxyConfigError) -> [String: Node] {
        guard let mapping = node.mapping else { throw error(node, "expected \(what) as a mapping of \(allowed.joined(separator: ", "))") }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string, allowed.contains(name) else {
                throw error(key, "unknown key `\(key.string ?? "?")` in \(what); expected one of \(allowed.joined(separator: ", "))")
            }
            result[name] = value
        }
        return result
    }

    package func required(_ fields: [String: Node], _ key: String, in node: Node, _ what: String) throws(ProxyConfigError) -> Node {
        guard let value = fields[key] else { throw error(node, "\(what) needs `\(key)`") }
        return value
    }

    package func string(_ node: Node, _ what: String) throws(ProxyConfigError) -> String {
        guard let scalar = node.scalar, !scalar.string.isEmpty else { throw error(node, "expected \(what) as a string") }
        return scalar.string
    }

    package func integer(_ node: Node, _ what: String, range: ClosedRange<Int>) throws(ProxyConfigError) -> Int {
        guard let text = node.scalar?.string, let value = Int(text), range.contains(value) else {
            throw error(node, "expected \(what) as an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    package func duration(_ node: Node, _ what: String) throws(ProxyConfigError) -> Duration {
        guard let text = node.scalar?.string, let value = Duration(parsing: text) else {
            throw error(node, "expected \(what) as a duration such as 250ms, 2s, 5m or 1h")
        }
        return value
    }

    package func address(_ node: Node, _ what: String) throws(ProxyConfigError) -> SocketAddress {
        guard let text = node.scalar?.string, let value = SocketAddress(parsing: text) else {
            throw error(node, "expected \(what) as host:port with a numeric IP (127.0.0.1:6000, [2001:db8::1]:6000)")
        }
        return value
    }

    package func boolean(_ node: Node, _ what: String) throws(ProxyConfigError) -> Bool {
        switch node.scalar?.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(node, "expected \(what) as true or false")
        }
    }

    package func choice<T: RawRepresentable & CaseIterable>(_ node: Node, _ what: String) throws(ProxyConfigError) -> T where T.RawValue == String {
        guard let text = node.scalar?.string, let value = T(rawValue: text) else {
            throw error(node, "expected \(what) as one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    package func list(_ node: Node, _ what: String) throws(ProxyConfigError) -> [Node] {
        guard let sequence = node.sequence, !sequence.isEmpty else { throw error(node, "expected \(what) as a non-empty list") }
        return Array(sequence)
    }

    func config(_ root: Node) throws(ProxyConfigError) -> ProxyConfig {
        let top = try fields(root, "the configuration", allowed: ["listeners", "clusters", "metrics", "drain_timeout", "access_log", "endpoints_cgroup"])
        var clusters: [ClusterConfig] = []
        for node in try list(try required(top, "clusters", in: root, "the configuration"), "`clusters`") {
            let cluster = try self.cluster(node)
            if clusters.contains(where: { $0.name == cluster.name }) { throw error(node, "a second cluster named `\(cluster.name)`; expected unique names") }
            clusters.append(cluster)
        }
        var listeners: [ListenerConfig] = []
        for node in try list(try required(top, "listeners", in: root, "the configuration"), "`listeners`") {
            let listener = try self.listener(node, index: listeners.count)
            if !clusters.contains(where: { $0.name == listener.cluster }) {
                let clusterNode = node.mapping?["cluster"] ?? node
                throw error(clusterNode, "unknown cluster `\(listener.cluster)`; expected one of \(clusters.map(\.name).joined(separator: ", "))")
            }
            if listeners.contains(where: { $0.name == listener.name }) { throw error(node, "a second listener named `\(listener.name)`; expected unique names") }
            if listeners.contains(where: { $0.address == listener.address && listener.address.port != 0 }) {
                throw error(node, "a second listener on \(listener.address); expected one listener per address")
            }
            listeners.append(listener)
        }
        var config = ProxyConfig(listeners: listeners, clusters: clusters)
        if let node = top["metrics"] { config.metricsAddress = try address(node, "`metrics`") }
        if let node = top["drain_timeout"] { config.drainTimeout = try duration(node, "`drain_timeout`") }
        if let node = top["access_log"] { config.accessLog = try boolean(node, "`access_log`") }
        if let node = top["endpoints_cgroup"] {
            let path = try string(node, "`endpoints_cgroup` (a cgroup v2 directory)")
            guard path.hasPrefix("/") else { throw error(node, "expected `endpoints_cgroup` as an absolute path to a cgroup v2 directory") }
            config.endpointsCgroup = path
        }
        return config
    }

    func listener(_ node: Node, index: Int) throws(ProxyConfigError) -> ListenerConfig {
        let what = "a listener"
        let entries = try fields(node, what, allowed: ["name", "bind", "cluster", "datapath", "connect_timeout", "idle_timeout", "max_connections"])
        var listener = ListenerConfig(
            name: try entries["name"].map { node throws(ProxyConfigError) in try string(node, "the listener's `name`") } ?? "listener\(index)",
            address: try address(try required(entries, "bind", in: node, what), "`bind`"),
            cluster: try string(try required(entries, "cluster", in: node, what), "`cluster`"))
        if let value = entries["datapath"] { listener.datapath = try choice(value, "`datapath`") }
        if let value = entries["connect_timeout"] { listener.connectTimeout = try duration(value, "`connect_timeout`") }
        if let value = entries["idle_timeout"] {
            listener.idleTimeout = value.scalar?.string == "none" ? nil : try duration(value, "`idle_timeout` (or none)")
        }
        if let value = entries["max_connections"] { listener.maxConnections = try integer(value, "`max_connections`", range: 1...1_000_000) }
        return listener
    }

    func cluster(_ node: Node) throws(ProxyConfigError) -> ClusterConfig {
        let what = "a cluster"
        let entries = try fields(node, what, allowed: ["name", "balance", "upstreams", "health_check"])
        let name = try string(try required(entries, "name", in: node, what), "the cluster's `name`")
        var upstreams: [UpstreamConfig] = []
        for upstreamNode in try list(try required(entries, "upstreams", in: node, what), "`upstreams`") {
            if upstreamNode.scalar != nil {
                upstreams.append(UpstreamConfig(address: try address(upstreamNode, "an upstream")))
                continue
            }
            let upstream = try fields(upstreamNode, "an upstream", allowed: ["address", "weight"])
            upstreams.append(UpstreamConfig(
                address: try address(try required(upstream, "address", in: upstreamNode, "an upstream"), "`address`"),
                weight: try upstream["weight"].map { node throws(ProxyConfigError) in try integer(node, "`weight`", range: 1...1000) } ?? 1))
        }
        var cluster = ClusterConfig(name: name, upstreams: upstreams)
        if let value = entries["balance"] { cluster.balancing = try choice(value, "`balance`") }
        if let value = entries["health_check"] { cluster.healthCheck = try healthCheck(value) }
        return cluster
    }

    /// A `health_check` mapping: interval, timeout, rise, fall.
    package func healthCheck(_ value: Node) throws(ProxyConfigError) -> HealthCheck {
        let check = try fields(value, "`health_check`", allowed: ["interval", "timeout", "rise", "fall"])
        var health = HealthCheck()
        if let node = check["interval"] { health.interval = try duration(node, "`interval`") }
        if let node = check["timeout"] { health.timeout = try duration(node, "`timeout`") }
        if let node = check["rise"] { health.rise = try integer(node, "`rise`", range: 1...100) }
        if let node = check["fall"] { health.fall = try integer(node, "`fall`", range: 1...100) }
        if health.timeout > health.interval { throw error(value, "expected `timeout` no longer than `interval`") }
        return health
    }
}
