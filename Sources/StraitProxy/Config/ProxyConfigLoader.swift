import Foundation
import StraitNet
import Yams

/// A configuration mistake, located: `file:line:column: message`, where the message says what
/// was expected. Line and column are 1-based, as editors show them (0 when the mistake has no
/// place, such as an unreadable file). Control characters in the file name and message are
/// escaped, so a hostile file cannot send raw bytes to a terminal or forge log lines.
public struct ProxyConfigError: Error, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file.escapingControlCharacters
        self.line = line
        self.column = column
        self.message = message.escapingControlCharacters
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
///     max_in_flight: 4MiB       # sockmap: bytes the kernel holds per direction before copying
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
    /// Reads and checks the file at `path`. An unreadable file is reported with its errno.
    public static func load(path: String) throws(ProxyConfigError) -> ProxyConfig {
        let bytes: [UInt8]
        do {
            bytes = try ConfigText.read(path: path)
        } catch {
            throw ProxyConfigError(file: path, line: 0, column: 0, message: "cannot read the file: \(error)")
        }
        return try parse(bytes: bytes, file: path)
    }

    /// Checks a file's bytes: at most ``ConfigText/maximumBytes``, UTF-8 (a leading byte-order mark
    /// is skipped) without control bytes, nested at most ``ConfigText/maximumDepth`` deep, then YAML
    /// of the shape above, then ``ProxyConfig/validate(dualStack:)``.
    public static func parse(bytes: [UInt8], file: String) throws(ProxyConfigError) -> ProxyConfig {
        try parse(try ConfigText.decode(bytes, file: file), file: file)
    }

    /// The checked text of the file at `path` (size, UTF-8, control bytes, as ``load(path:)``), for
    /// the other YAML configurations that share this reader (`strait lb`).
    public static func text(path: String) throws(ProxyConfigError) -> String {
        let bytes: [UInt8]
        do {
            bytes = try ConfigText.read(path: path)
        } catch {
            throw ProxyConfigError(file: path, line: 0, column: 0, message: "cannot read the file: \(error)")
        }
        return try ConfigText.decode(bytes, file: path)
    }

    /// The document's root node (bounded as ``compose(_:file:)``); an empty document is an error
    /// saying what was `expected`.
    public static func root(_ yaml: String, file: String, expected: String) throws(ProxyConfigError) -> Node {
        guard let node = try compose(yaml, file: file) else {
            throw ProxyConfigError(file: file, line: 1, column: 1, message: "expected \(expected), found an empty document")
        }
        return node
    }

    /// Checks YAML text; `file` names it in errors.
    public static func parse(_ yaml: String, file: String) throws(ProxyConfigError) -> ProxyConfig {
        guard let root = try compose(yaml, file: file) else {
            throw ProxyConfigError(file: file, line: 1, column: 1, message: "expected a mapping with `listeners` and `clusters`, found an empty document")
        }
        return try config(from: root, file: file)
    }

    /// Checks a proxy configuration that is one subtree of a larger document (the `proxy` section of
    /// `strait agent`'s file): errors carry that document's line and column.
    public static func config(from node: Node, file: String) throws(ProxyConfigError) -> ProxyConfig {
        try ConfigNodeReader(file: file).config(node)
    }

    /// Parses YAML into a node tree with positions (nil for an empty document); a syntax error is
    /// reported at its line and column.
    public static func compose(_ yaml: String, file: String) throws(ProxyConfigError) -> Node? {
        let yaml = yaml.hasPrefix("\u{FEFF}") ? String(yaml.dropFirst()) : yaml
        try ConfigText.checkShape(yaml, file: file)
        do {
            return try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw syntaxError(error, file: file, yaml: yaml)
        } catch {
            throw ProxyConfigError(file: file, line: 0, column: 0, message: "\(error)")
        }
    }

    private static func syntaxError(_ error: YamlError, file: String, yaml: String) -> ProxyConfigError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return ProxyConfigError(file: file, line: mark.line, column: mark.column, message: "invalid YAML: \(problem)\(ConfigText.hint(line: mark.line, in: yaml))")
        default:
            return ProxyConfigError(file: file, line: 0, column: 0, message: "invalid YAML: \(error)")
        }
    }
}

/// Walks a YAML node tree; every failure carries the node's mark. The proxy's loader and the
/// agent's (`strait agent`, which embeds the proxy schema) read scalars, lists and mappings with it.
public struct ConfigNodeReader: Sendable {
    /// The file named in errors.
    public let file: String

    /// A reader whose errors name `file`.
    public init(file: String) { self.file = file }

    /// A located error at `node`.
    public func error(_ node: Node, _ message: String) -> ProxyConfigError {
        ProxyConfigError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, message: message)
    }

    /// The mapping's entries by key, after checking that every key is one of `allowed` and appears
    /// once (YAML parsers differ on which of two equal keys wins: a second one is a mistake).
    public func fields(_ node: Node, _ what: String, allowed: [String]) throws(ProxyConfigError) -> [String: Node] {
        guard let mapping = node.mapping else { throw error(node, "expected \(what) as a mapping of \(allowed.joined(separator: ", "))") }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string, allowed.contains(name) else {
                throw error(key, "unknown key `\(key.string ?? "?")` in \(what); expected one of \(allowed.joined(separator: ", "))")
            }
            guard result.updateValue(value, forKey: name) == nil else {
                throw error(key, "a second `\(name)` key in \(what); expected each key once")
            }
        }
        return result
    }

    /// The value of `key`, or an error at `node` saying `what` needs it.
    public func required(_ fields: [String: Node], _ key: String, in node: Node, _ what: String) throws(ProxyConfigError) -> Node {
        guard let value = fields[key] else { throw error(node, "\(what) needs `\(key)`") }
        return value
    }

    /// A non-empty scalar.
    public func string(_ node: Node, _ what: String) throws(ProxyConfigError) -> String {
        guard let scalar = node.scalar, !scalar.string.isEmpty else { throw error(node, "expected \(what) as a string") }
        return scalar.string
    }

    /// An integer scalar within `range`.
    public func integer(_ node: Node, _ what: String, range: ClosedRange<Int>) throws(ProxyConfigError) -> Int {
        guard let text = node.scalar?.string, let value = Int(text), range.contains(value) else {
            throw error(node, "expected \(what) as an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// A byte count: plain bytes, or with a `KiB`, `MiB` or `GiB` suffix (`4MiB`, `512KiB`).
    func byteSize(_ node: Node, _ what: String, range: ClosedRange<Int>) throws(ProxyConfigError) -> Int {
        let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("", 1)]
        let text = node.scalar?.string.trimmingCharacters(in: .whitespaces) ?? ""
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
            if let value = Int(number), value <= range.upperBound / scale, range.contains(value * scale) { return value * scale }
            break
        }
        throw error(node, "expected \(what) as a size in \(range.lowerBound >> 10)KiB...\(range.upperBound >> 20)MiB (bytes, or with KiB, MiB or GiB)")
    }

    /// A duration scalar: `250ms`, `2s`, `5m`, `1h` or bare seconds.
    public func duration(_ node: Node, _ what: String) throws(ProxyConfigError) -> Duration {
        guard let text = node.scalar?.string, let value = Duration(parsing: text) else {
            throw error(node, "expected \(what) as a duration such as 250ms, 2s, 5m or 1h (digits, an optional fraction, at most 366 days)")
        }
        return value
    }

    /// A `host:port` scalar with a numeric IP (or localhost); IPv6 hosts in brackets, quoted in YAML.
    public func address(_ node: Node, _ what: String) throws(ProxyConfigError) -> SocketAddress {
        guard let text = node.scalar?.string else {
            // `bind: [::1]:6000` unquoted is a YAML flow sequence, not text.
            throw error(node, "expected \(what) as host:port; an IPv6 address must be quoted in YAML: \"[2001:db8::1]:6000\"")
        }
        guard let value = SocketAddress(parsing: text) else {
            let unbracketed = !text.hasPrefix("[") && text.filter { $0 == ":" }.count > 1
            throw error(node, unbracketed
                ? "expected \(what) as host:port with an IPv6 host in brackets (\"[::1]:6000\"): `\(text)` is ambiguous"
                : "expected \(what) as host:port with a numeric IP (127.0.0.1:6000, \"[2001:db8::1]:6000\")")
        }
        return value
    }

    /// `true`/`yes`/`on` or `false`/`no`/`off`.
    public func boolean(_ node: Node, _ what: String) throws(ProxyConfigError) -> Bool {
        switch node.scalar?.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(node, "expected \(what) as true or false")
        }
    }

    /// One of an enumeration's raw values.
    public func choice<T: RawRepresentable & CaseIterable>(_ node: Node, _ what: String) throws(ProxyConfigError) -> T where T.RawValue == String {
        guard let text = node.scalar?.string, let value = T(rawValue: text) else {
            throw error(node, "expected \(what) as one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    /// A non-empty sequence.
    public func list(_ node: Node, _ what: String) throws(ProxyConfigError) -> [Node] {
        guard let sequence = node.sequence, !sequence.isEmpty else { throw error(node, "expected \(what) as a non-empty list") }
        return Array(sequence)
    }

    func config(_ root: Node) throws(ProxyConfigError) -> ProxyConfig {
        let top = try fields(root, "the configuration", allowed: ["listeners", "clusters", "metrics", "drain_timeout", "access_log", "endpoints_cgroup"])
        let clusterNodes = try list(try required(top, "clusters", in: root, "the configuration"), "`clusters`")
        let listenerNodes = try list(try required(top, "listeners", in: root, "the configuration"), "`listeners`")
        var clusters: [ClusterConfig] = []
        for node in clusterNodes { clusters.append(try cluster(node)) }
        var listeners: [ListenerConfig] = []
        for node in listenerNodes { listeners.append(try listener(node, index: listeners.count)) }
        var config = ProxyConfig(listeners: listeners, clusters: clusters)
        if let node = top["metrics"] { config.metricsAddress = try address(node, "`metrics`") }
        if let node = top["drain_timeout"] { config.drainTimeout = try duration(node, "`drain_timeout`") }
        if let node = top["access_log"] { config.accessLog = try boolean(node, "`access_log`") }
        if let node = top["endpoints_cgroup"] { config.endpointsCgroup = try string(node, "`endpoints_cgroup` (a cgroup v2 directory)") }
        do {
            try config.validate()
        } catch {
            func field(_ node: Node, _ name: String?) -> Node { name.flatMap { node.mapping?[$0] } ?? node }
            let node: Node =
                switch error.subject {
                case .configuration: root
                case .listener(let index, let name): field(listenerNodes[index], name)
                case .cluster(let index, let name): field(clusterNodes[index], name)
                case .upstream(let cluster, let index): clusterNodes[cluster].mapping?["upstreams"]?.sequence.map { Array($0)[index] } ?? clusterNodes[cluster]
                case .topLevel(let name): top[name] ?? root
                }
            throw self.error(node, error.message)
        }
        return config
    }

    func listener(_ node: Node, index: Int) throws(ProxyConfigError) -> ListenerConfig {
        let what = "a listener"
        let entries = try fields(node, what, allowed: ["name", "bind", "cluster", "datapath", "connect_timeout", "idle_timeout", "max_connections", "max_in_flight"])
        var listener = ListenerConfig(
            name: try entries["name"].map { node throws(ProxyConfigError) in try string(node, "the listener's `name`") } ?? "listener\(index)",
            address: try address(try required(entries, "bind", in: node, what), "`bind`"),
            cluster: try string(try required(entries, "cluster", in: node, what), "`cluster`"))
        if let value = entries["datapath"] { listener.datapath = try choice(value, "`datapath`") }
        if let value = entries["connect_timeout"] { listener.connectTimeout = try duration(value, "`connect_timeout`") }
        if let value = entries["idle_timeout"] {
            listener.idleTimeout = value.scalar?.string == "none" ? nil : try duration(value, "`idle_timeout` (or none)")
        }
        if let value = entries["max_connections"] { listener.maxConnections = try integer(value, "`max_connections`", range: ListenerConfig.maxConnectionsRange) }
        if let value = entries["max_in_flight"] { listener.maxInFlight = try byteSize(value, "`max_in_flight`", range: (64 << 10)...(1 << 30)) }
        return listener
    }

    func cluster(_ node: Node) throws(ProxyConfigError) -> ClusterConfig {
        let what = "a cluster"
        let entries = try fields(node, what, allowed: ["name", "balance", "upstreams", "health_check"])
        let name = try string(try required(entries, "name", in: node, what), "the cluster's `name`")
        var upstreams: [UpstreamConfig] = []
        for upstreamNode in try list(try required(entries, "upstreams", in: node, what), "`upstreams`") {
            if upstreamNode.mapping == nil {
                upstreams.append(UpstreamConfig(address: try address(upstreamNode, "an upstream")))
                continue
            }
            let upstream = try fields(upstreamNode, "an upstream", allowed: ["address", "weight"])
            upstreams.append(UpstreamConfig(
                address: try address(try required(upstream, "address", in: upstreamNode, "an upstream"), "`address`"),
                weight: try upstream["weight"].map { node throws(ProxyConfigError) in try integer(node, "`weight`", range: UpstreamConfig.weightRange) } ?? 1))
        }
        var cluster = ClusterConfig(name: name, upstreams: upstreams)
        if let value = entries["balance"] { cluster.balancing = try choice(value, "`balance`") }
        if let value = entries["health_check"] { cluster.healthCheck = try healthCheck(value) }
        return cluster
    }

    /// A `health_check` mapping: interval, timeout, rise, fall (the proxy's clusters and `strait lb`'s services).
    public func healthCheck(_ value: Node) throws(ProxyConfigError) -> HealthCheck {
        let check = try fields(value, "`health_check`", allowed: ["interval", "timeout", "rise", "fall"])
        var health = HealthCheck()
        if let node = check["interval"] { health.interval = try duration(node, "`interval`") }
        if let node = check["timeout"] { health.timeout = try duration(node, "`timeout`") }
        if let node = check["rise"] { health.rise = try integer(node, "`rise`", range: HealthCheck.countRange) }
        if let node = check["fall"] { health.fall = try integer(node, "`fall`", range: HealthCheck.countRange) }
        return health
    }
}
