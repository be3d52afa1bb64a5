import Foundation
import StraitNet
import StraitSystem
import Yams

/// A configuration mistake, located: `file:line:column: message`, where the message says what
/// was expected. Line and column are 1-based, as editors show them (0 when the mistake has no
/// place, such as an unreadable file). Control characters in the file name and message are
/// escaped, so a hostile file cannot send raw bytes to a terminal or forge log lines.
public struct ProxyConfigError: Error, Equatable, CustomStringConvertible {
    /// The file's path as given, control characters escaped.
    public let file: String
    /// The mistake's line, from 1; 0 when it has no place.
    public let line: Int
    /// The mistake's column, from 1; 0 when it has no place.
    public let column: Int
    /// What was wrong and what was expected, control characters escaped.
    public let message: String

    /// A mistake at `line` and `column` of `file`. Escapes control characters in `file` and
    /// `message` here (one pass over each), so every later print of it is safe.
    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file.escapingControlCharacters
        self.line = line
        self.column = column
        self.message = message.escapingControlCharacters
    }

    /// `file:line:column: message`, the form editors and CI annotations jump to.
    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Every mistake found in one configuration file, in the order of the file: what
/// `strait proxy --check` prints and what a rejected reload answers, so a file is fixed in one
/// pass. Mistakes in the shape of the file (unknown keys, wrong types) are all reported; the value
/// checks of ``ProxyConfig/problems(dualStack:limit:)`` run once the shape is right (a cluster that
/// failed to read would otherwise make every listener naming it a second mistake).
public struct ProxyConfigErrors: Error, Equatable, CustomStringConvertible {
    /// At least one; at most ``ProxyConfigLoader/maximumReported``.
    public let errors: [ProxyConfigError]

    /// One `file:line:column: message` per line.
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Reads a ``ProxyConfig`` from YAML, checking every field and reporting every mistake
/// (``check(path:)``) or the first (``load(path:)``) with its position. Unknown keys are errors too (a misspelt `helth_check` must not be ignored).
///
/// ```yaml
/// listeners:
///   - name: web
///     bind: 127.0.0.1:6000
///     cluster: backend
///     datapath: auto            # auto | skmsg | sockmap | splice | copy
///     connect_timeout: 2s
///     idle_timeout: 1h
///     max_connections: 10000   # then further clients wait in the listen queue
///     accept_proxy: v2          # behind a balancer: every client starts with a PROXY v2 header
///     max_in_flight: 4MiB       # sockmap: bytes the kernel holds per direction before copying
/// clusters:
///   - name: backend
///     balance: round_robin      # round_robin | least_connections | consistent_hash
///     retries: 1                # another upstream after a failed connect
///     upstreams:
///       - { address: 127.0.0.1:5201, weight: 2 }
///       - 127.0.0.1:5202
///       - { address: backup.example:5203, backup: true }   # a DNS name: one upstream per address
///     health_check: { interval: 2s, timeout: 1s, rise: 2, fall: 3 }
///     passive_health: { failures: 5, ejection: 30s }
///     send_proxy: v2
/// metrics: 127.0.0.1:9479
/// drain_timeout: 1m30s
/// dns_refresh: 30s
/// access_log: true
/// access_log_file: /var/log/strait/access.jsonl
/// endpoints_cgroup: /sys/fs/cgroup/unified/apps   # local endpoints that may use skmsg
/// ```
public enum ProxyConfigLoader {
    /// The most mistakes one check reports (a file of 100,000 broken listeners says so in its first 100).
    public static let maximumReported = 100

    /// Reads and checks the file at `path`. An unreadable file is reported with its errno. Throws
    /// the first mistake of ``check(path:)``.
    public static func load(path: String) throws(ProxyConfigError) -> ProxyConfig {
        do { return try check(path: path) } catch { throw error.errors[0] }
    }

    /// Reads and checks the file at `path`, reporting every mistake (up to ``maximumReported``):
    /// `strait proxy --check`, start and reload all read a file through here.
    public static func check(path: String) throws(ProxyConfigErrors) -> ProxyConfig {
        let bytes: [UInt8]
        do {
            bytes = try ConfigText.read(path: path)
        } catch {
            throw ProxyConfigErrors(errors: [ProxyConfigError(file: path, line: 0, column: 0, message: "cannot read the file: \(error)")])
        }
        return try checked(bytes: bytes, file: path, resolvingNames: true)
    }

    /// Every mistake of a file's bytes (``check(path:)`` and ``parse(bytes:file:resolvingNames:)``).
    static func checked(bytes: [UInt8], file: String, resolvingNames: Bool) throws(ProxyConfigErrors) -> ProxyConfig {
        let text: String
        do { text = try ConfigText.decode(bytes, file: file) } catch { throw ProxyConfigErrors(errors: [error]) }
        return try checked(text, file: file, resolvingNames: resolvingNames)
    }

    /// Every mistake of a file's text.
    static func checked(_ yaml: String, file: String, resolvingNames: Bool) throws(ProxyConfigErrors) -> ProxyConfig {
        let root: Node?
        do { root = try compose(yaml, file: file) } catch { throw ProxyConfigErrors(errors: [error]) }
        guard let root else {
            throw ProxyConfigErrors(errors: [ProxyConfigError(file: file, line: 1, column: 1, message: "expected a mapping with `listeners` and `clusters`, found an empty document")])
        }
        return try ConfigNodeReader(file: file, resolvesNames: resolvingNames).checkedConfig(root)
    }

    /// Checks a file's bytes: at most ``ConfigText/maximumBytes``, UTF-8 (a leading byte-order mark
    /// is skipped) without control bytes, nested at most ``ConfigText/maximumDepth`` deep, then YAML
    /// of the shape above, then ``ProxyConfig/validate(dualStack:)``. `resolvingNames` false refuses
    /// upstreams given by DNS name instead of resolving them (the fuzzer: no network I/O).
    public static func parse(bytes: [UInt8], file: String, resolvingNames: Bool = true) throws(ProxyConfigError) -> ProxyConfig {
        do { return try checked(bytes: bytes, file: file, resolvingNames: resolvingNames) } catch { throw error.errors[0] }
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

    /// Checks YAML text; `file` names it in errors. Throws the first mistake of ``check(_:file:)``.
    public static func parse(_ yaml: String, file: String) throws(ProxyConfigError) -> ProxyConfig {
        do { return try checked(yaml, file: file, resolvingNames: true) } catch { throw error.errors[0] }
    }

    /// Checks YAML text, reporting every mistake (as ``check(path:)``).
    public static func check(_ yaml: String, file: String) throws(ProxyConfigErrors) -> ProxyConfig {
        try checked(yaml, file: file, resolvingNames: true)
    }

    /// Checks a proxy configuration that is one subtree of a larger document (the `proxy` section of
    /// `strait agent`'s file): errors carry that document's line and column.
    public static func config(from node: Node, file: String) throws(ProxyConfigError) -> ProxyConfig {
        do { return try ConfigNodeReader(file: file).checkedConfig(node) } catch { throw error.errors[0] }
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

    /// Whether upstreams given by DNS name are resolved (``UpstreamResolver``) or refused.
    let resolvesNames: Bool

    /// A reader whose errors name `file`.
    public init(file: String) { self.init(file: file, resolvesNames: true) }

    init(file: String, resolvesNames: Bool) {
        self.file = file
        self.resolvesNames = resolvesNames
    }

    /// A located error at `node`.
    public func error(_ node: Node, _ message: String) -> ProxyConfigError {
        ProxyConfigError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, message: message)
    }

    /// The mapping's entries by key, after checking that every key is one of `allowed` and appears
    /// once (YAML parsers differ on which of two equal keys wins: a second one is a mistake).
    public func fields(_ node: Node, _ what: String, allowed: [String]) throws(ProxyConfigError) -> [String: Node] {
        let mistakes = ConfigMistakes()
        let result = try fields(node, what, allowed: allowed, mistakes: mistakes)
        if let first = mistakes.errors.first { throw first }
        return result
    }

    /// ``fields(_:_:allowed:)``, recording each unknown or repeated key in `mistakes` and going on
    /// with the others; throws only when `node` is not a mapping.
    func fields(_ node: Node, _ what: String, allowed: [String], mistakes: ConfigMistakes) throws(ProxyConfigError) -> [String: Node] {
        guard let mapping = node.mapping else { throw error(node, "expected \(what) as a mapping of \(allowed.joined(separator: ", "))") }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string, allowed.contains(name) else {
                mistakes.record(error(key, "unknown key `\(key.string ?? "?")` in \(what); expected one of \(allowed.joined(separator: ", "))"))
                continue
            }
            guard result.updateValue(value, forKey: name) == nil else {
                mistakes.record(error(key, "a second `\(name)` key in \(what); expected each key once"))
                continue
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

    /// A duration scalar: `250ms`, `2s`, `5m`, `1h`, a compound such as `1m30s`, or bare seconds.
    public func duration(_ node: Node, _ what: String) throws(ProxyConfigError) -> Duration {
        guard let text = node.scalar?.string, let value = Duration(parsing: text) else {
            throw error(node, "expected \(what) as a duration such as 250ms, 2s, 5m, 1h or 1m30s (digits, an optional fraction, largest unit first, at most 366 days)")
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

    /// Reads and checks a proxy configuration's root node, collecting every mistake: first the
    /// shape (each field of each listener and cluster read on its own), then, when the shape is
    /// right, ``ProxyConfig/problems(dualStack:limit:)`` located at the nodes they are about.
    func checkedConfig(_ root: Node) throws(ProxyConfigErrors) -> ProxyConfig {
        let mistakes = ConfigMistakes()
        func reported() -> ProxyConfigErrors { ProxyConfigErrors(errors: Array(mistakes.errors.prefix(ProxyConfigLoader.maximumReported))) }
        guard let top = mistakes.attempt({ () throws(ProxyConfigError) in
            try fields(root, "the configuration", allowed: ["listeners", "clusters", "metrics", "drain_timeout", "access_log", "endpoints_cgroup", "dns_refresh", "access_log_file"], mistakes: mistakes)
        }) else { throw reported() }
        let clusterNodes = mistakes.attempt { () throws(ProxyConfigError) in try list(try required(top, "clusters", in: root, "the configuration"), "`clusters`") } ?? []
        let listenerNodes = mistakes.attempt { () throws(ProxyConfigError) in try list(try required(top, "listeners", in: root, "the configuration"), "`listeners`") } ?? []
        let clusters = clusterNodes.compactMap { node in mistakes.attempt { () throws(ProxyConfigError) in try cluster(node, mistakes: mistakes) } }
        var listeners: [ListenerConfig] = []
        for node in listenerNodes {
            if let parsed = mistakes.attempt({ () throws(ProxyConfigError) in try listener(node, index: listeners.count, mistakes: mistakes) }) { listeners.append(parsed) }
        }
        var config = ProxyConfig(listeners: listeners, clusters: clusters)
        if let node = top["metrics"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try metricsAddress(node) }) { config.metricsAddress = value }
        if let node = top["drain_timeout"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try duration(node, "`drain_timeout`") }) { config.drainTimeout = value }
        if let node = top["access_log_file"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try string(node, "`access_log_file` (a path)") }) { config.accessLogFile = value }
        if let node = top["dns_refresh"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try duration(node, "`dns_refresh`") }) { config.dnsRefresh = value }
        if let node = top["access_log"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try boolean(node, "`access_log`") }) { config.accessLog = value }
        if let node = top["endpoints_cgroup"], let value = mistakes.attempt({ () throws(ProxyConfigError) in try string(node, "`endpoints_cgroup` (a cgroup v2 directory)") }) {
            config.endpointsCgroup = value
        }
        guard mistakes.errors.isEmpty else { throw reported() }
        func field(_ node: Node, _ name: String?) -> Node { name.flatMap { node.mapping?[$0] } ?? node }
        for problem in config.problems(limit: ProxyConfigLoader.maximumReported) {
            let node: Node =
                switch problem.subject {
                case .configuration: root
                case .listener(let index, let name): field(listenerNodes[index], name)
                case .cluster(let index, let name): field(clusterNodes[index], name)
                case .upstream(let cluster, let index): clusterNodes[cluster].mapping?["upstreams"]?.sequence.map { Array($0)[index] } ?? clusterNodes[cluster]
                case .topLevel(let name): top[name] ?? root
                }
            mistakes.record(error(node, problem.message))
        }
        guard mistakes.errors.isEmpty else { throw reported() }
        return config
    }

    /// `metrics:` as `host:port`, or a bare host for ``ProxyConfig/defaultMetricsPort``.
    func metricsAddress(_ node: Node) throws(ProxyConfigError) -> SocketAddress {
        if let text = node.scalar?.string, !text.contains(":") || (text.hasPrefix("[") && text.hasSuffix("]")),
           let address = SocketAddress(parsing: "\(text):\(ProxyConfig.defaultMetricsPort)") {
            return address
        }
        return try address(node, "`metrics`")
    }

    func listener(_ node: Node, index: Int, mistakes: ConfigMistakes) throws(ProxyConfigError) -> ListenerConfig {
        let what = "a listener"
        let entries = try fields(node, what, allowed: ["name", "bind", "cluster", "datapath", "connect_timeout", "idle_timeout", "max_connections", "max_in_flight", "accept_proxy"], mistakes: mistakes)
        let name = mistakes.attempt { () throws(ProxyConfigError) in try entries["name"].map { node throws(ProxyConfigError) in try string(node, "the listener's `name`") } ?? "listener\(index)" }
        let bind = mistakes.attempt { () throws(ProxyConfigError) in try address(try required(entries, "bind", in: node, what), "`bind`") }
        let cluster = mistakes.attempt { () throws(ProxyConfigError) in try string(try required(entries, "cluster", in: node, what), "`cluster`") }
        var listener = ListenerConfig(name: name ?? "", address: bind ?? .ip(IPAddress.anyV4, port: 0), cluster: cluster ?? "")
        if let value = entries["datapath"], let datapath: Datapath = mistakes.attempt({ () throws(ProxyConfigError) in try choice(value, "`datapath`") }) { listener.datapath = datapath }
        if let value = entries["connect_timeout"], let timeout = mistakes.attempt({ () throws(ProxyConfigError) in try duration(value, "`connect_timeout`") }) { listener.connectTimeout = timeout }
        if let value = entries["idle_timeout"] {
            if value.scalar?.string == "none" {
                listener.idleTimeout = nil
            } else if let timeout = mistakes.attempt({ () throws(ProxyConfigError) in try duration(value, "`idle_timeout` (or none)") }) {
                listener.idleTimeout = timeout
            }
        }
        if let value = entries["max_connections"], let limit = mistakes.attempt({ () throws(ProxyConfigError) in try integer(value, "`max_connections`", range: ListenerConfig.maxConnectionsRange) }) {
            listener.maxConnections = limit
        }
        if let value = entries["max_in_flight"], let bytes = mistakes.attempt({ () throws(ProxyConfigError) in try byteSize(value, "`max_in_flight`", range: (64 << 10)...(1 << 30)) }) {
            listener.maxInFlight = bytes
        }
        if let value = entries["accept_proxy"], let version: ProxyProtocolVersion = mistakes.attempt({ () throws(ProxyConfigError) in try choice(value, "`accept_proxy`") }) {
            listener.acceptProxy = version
        }
        return listener
    }

    func cluster(_ node: Node, mistakes: ConfigMistakes) throws(ProxyConfigError) -> ClusterConfig {
        let what = "a cluster"
        let entries = try fields(node, what, allowed: ["name", "balance", "upstreams", "health_check", "passive_health", "retries", "send_proxy"], mistakes: mistakes)
        let name = mistakes.attempt { () throws(ProxyConfigError) in try string(try required(entries, "name", in: node, what), "the cluster's `name`") }
        var upstreams: [UpstreamConfig] = []
        let upstreamNodes = mistakes.attempt { () throws(ProxyConfigError) in try list(try required(entries, "upstreams", in: node, what), "`upstreams`") } ?? []
        for upstreamNode in upstreamNodes {
            if let parsed = mistakes.attempt({ () throws(ProxyConfigError) in try upstream(upstreamNode, mistakes: mistakes) }) { upstreams += parsed }
        }
        var cluster = ClusterConfig(name: name ?? "", upstreams: upstreams)
        if let value = entries["balance"], let balancing: Balancing = mistakes.attempt({ () throws(ProxyConfigError) in try choice(value, "`balance`") }) { cluster.balancing = balancing }
        if let value = entries["health_check"] { cluster.healthCheck = mistakes.attempt { () throws(ProxyConfigError) in try healthCheck(value) } }
        if let value = entries["passive_health"] { cluster.passiveHealth = mistakes.attempt { () throws(ProxyConfigError) in try passiveHealth(value) } }
        if let value = entries["send_proxy"], let version: ProxyProtocolVersion = mistakes.attempt({ () throws(ProxyConfigError) in try choice(value, "`send_proxy`") }) {
            cluster.sendProxy = version
        }
        if let value = entries["retries"], let retries = mistakes.attempt({ () throws(ProxyConfigError) in try integer(value, "`retries`", range: ClusterConfig.retriesRange) }) {
            cluster.retries = retries
        }
        return cluster
    }

    /// One upstream entry: `host:port`, or a mapping of `address`, `weight` and `backup`. A DNS
    /// name gives one upstream per address it resolves to (``UpstreamResolver``), now.
    func upstream(_ node: Node, mistakes: ConfigMistakes) throws(ProxyConfigError) -> [UpstreamConfig] {
        if node.mapping == nil { return try upstreamAddresses(node, "an upstream").map { UpstreamConfig(address: $0.address, hostname: $0.hostname) } }
        let entries = try fields(node, "an upstream", allowed: ["address", "weight", "backup"], mistakes: mistakes)
        var weight = 1
        var backup = false
        if let value = entries["weight"], let parsed = mistakes.attempt({ () throws(ProxyConfigError) in try integer(value, "`weight`", range: UpstreamConfig.weightRange) }) {
            weight = parsed
        }
        if let value = entries["backup"], let parsed = mistakes.attempt({ () throws(ProxyConfigError) in try boolean(value, "`backup`") }) { backup = parsed }
        return try upstreamAddresses(try required(entries, "address", in: node, "an upstream"), "`address`").map {
            UpstreamConfig(address: $0.address, weight: weight, backup: backup, hostname: $0.hostname)
        }
    }

    /// An upstream's `host:port`: a numeric address, or a DNS name resolved to its addresses (a
    /// name that does not resolve is a mistake at its node).
    func upstreamAddresses(_ node: Node, _ what: String) throws(ProxyConfigError) -> [(address: SocketAddress, hostname: String?)] {
        if let text = node.scalar?.string, SocketAddress(parsing: text) == nil, let (name, port) = UpstreamResolver.nameAndPort(text), name != "localhost" {
            guard resolvesNames else { throw self.error(node, "`\(name)` is a DNS name, not resolved here; expected a numeric IP") }
            do { return try UpstreamResolver.resolve(name, port: port).map { ($0, name) } } catch { throw self.error(node, error.description) }
        }
        return [(try address(node, what), nil)]
    }

    /// A `passive_health` mapping: failures, ejection.
    func passiveHealth(_ value: Node) throws(ProxyConfigError) -> PassiveHealth {
        let entries = try fields(value, "`passive_health`", allowed: ["failures", "ejection"])
        var passive = PassiveHealth()
        if let node = entries["failures"] { passive.failures = try integer(node, "`failures`", range: PassiveHealth.failuresRange) }
        if let node = entries["ejection"] { passive.ejection = try duration(node, "`ejection`") }
        return passive
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

/// The mistakes found so far in one file, in the order they were found; a reader that collects
/// them goes on to the next field after each. One per check, on one thread.
final class ConfigMistakes {
    private(set) var errors: [ProxyConfigError] = []

    func record(_ error: ProxyConfigError) { errors.append(error) }

    /// `body`'s value, or nil after recording what it threw.
    func attempt<T>(_ body: () throws(ProxyConfigError) -> T) -> T? {
        do { return try body() } catch {
            record(error)
            return nil
        }
    }
}
