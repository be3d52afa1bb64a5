import StraitNet
import StraitSystem

/// What ``ProxyConfig/validate(dualStack:)`` found wrong, and which part of the configuration it is
/// about, so that ``ProxyConfigLoader`` can point at the line and column of that part.
public struct ProxyConfigProblem: Error, Equatable, CustomStringConvertible {
    /// The part of the configuration a problem is about.
    public enum Subject: Equatable, Sendable {
        /// The whole configuration.
        case configuration
        /// `listeners[index]`, or one of its fields (`bind`, `name`, `cluster`…) when `field` is set.
        case listener(Int, field: String?)
        /// `clusters[index]`, or one of its fields.
        case cluster(Int, field: String?)
        /// `clusters[cluster].upstreams[index]`.
        case upstream(cluster: Int, index: Int)
        /// A top-level key (`metrics`, `drain_timeout`, `endpoints_cgroup`).
        case topLevel(String)
    }

    /// What the problem is about, for the loader to find its line and column.
    public let subject: Subject
    /// What is wrong and what was expected, with control characters escaped.
    public let message: String

    /// A problem with `subject`; control characters in `message` are escaped here.
    public init(_ subject: Subject, _ message: String) {
        self.subject = subject
        self.message = message.escapingControlCharacters
    }

    /// The message alone: ``ProxyConfigLoader`` puts the `file:line:column` of ``subject`` in front.
    public var description: String { message }
}

extension UpstreamConfig {
    /// The weights an upstream may have.
    public static let weightRange = 1...1000
}

extension HealthCheck {
    /// The values `rise` and `fall` may have.
    public static let countRange = 1...100
}

extension ListenerConfig {
    /// The values `max_connections` may have.
    public static let maxConnectionsRange = 1...1_000_000
}

extension ProxyConfig {
    /// The most listeners and clusters one configuration may hold, and upstreams one cluster may
    /// hold: far above any real deployment, low enough that a check stays well under a second.
    public static let maximumListeners = 100_000
    /// The most clusters one configuration may hold (see ``maximumListeners``).
    public static let maximumClusters = 100_000
    /// The most upstreams one cluster may hold, a DNS name counting once per address it resolved
    /// to (see ``maximumListeners``).
    public static let maximumUpstreams = 10_000

    /// Checks everything about this configuration that does not need the kernel: names (unique, no
    /// control characters or spaces, so they cannot forge access-log lines or metric labels), that
    /// every listener's cluster exists, every number and duration in range, and that no two
    /// addresses among the listeners and `metrics` would collide at bind time (the same address;
    /// `0.0.0.0:P` beside another IPv4 address on port P; `[::]:P` beside another IPv6 address on P,
    /// and beside any IPv4 address on P when `dualStack`). Port 0 never collides. Throws the first
    /// of ``problems(dualStack:)``.
    ///
    /// `strait proxy --check`, ``ProxyConfigLoader``, ``Proxy/init(config:loopCount:kernelDatapath:inheriting:inheritingMetrics:logger:)``
    /// and ``Proxy/reload(_:)`` all call it, so a configuration that checks is one the proxy starts
    /// with (binding may still fail, for reasons outside the file). Linear in the size of the
    /// configuration. `dualStack` defaults to this host's `net.ipv6.bindv6only` being 0, which is
    /// how the proxy's IPv6 listeners bind.
    public func validate(dualStack: Bool = BindConflicts.hostIsDualStack) throws(ProxyConfigProblem) {
        if let first = problems(dualStack: dualStack, limit: 1).first { throw first }
    }

    /// Every problem ``validate(dualStack:)`` looks for, in the order of the file (clusters, then
    /// listeners, then the top-level keys), at most `limit` of them: what `--check` and a rejected
    /// reload report, so an operator fixes a file in one pass. The one place the configuration's
    /// values are checked. A listener naming a missing cluster is one problem, never a cascade.
    public func problems(dualStack: Bool = BindConflicts.hostIsDualStack, limit: Int = .max) -> [ProxyConfigProblem] {
        var found: [ProxyConfigProblem] = []
        func report(_ subject: ProxyConfigProblem.Subject, _ message: String) { if found.count < limit { found.append(ProxyConfigProblem(subject, message)) } }
        func check(_ duration: Duration, _ what: String, _ subject: ProxyConfigProblem.Subject, allowZero: Bool) {
            if let message = Self.durationProblem(duration, what, allowZero: allowZero) { report(subject, message) }
        }
        guard listeners.count <= Self.maximumListeners else {
            return [ProxyConfigProblem(.configuration, "\(listeners.count) listeners; expected at most \(Self.maximumListeners)")]
        }
        guard clusters.count <= Self.maximumClusters else {
            return [ProxyConfigProblem(.configuration, "\(clusters.count) clusters; expected at most \(Self.maximumClusters)")]
        }
        var clusterNames = Set<String>()
        for (index, cluster) in clusters.enumerated() {
            if let problem = Self.nameProblem(cluster.name) { report(.cluster(index, field: "name"), "cluster name: \(problem)") }
            if !clusterNames.insert(cluster.name).inserted {
                report(.cluster(index, field: nil), "a second cluster named `\(cluster.name)`; expected unique names")
            }
            if cluster.upstreams.isEmpty || cluster.upstreams.count > Self.maximumUpstreams {
                report(.cluster(index, field: "upstreams"), "expected from 1 to \(Self.maximumUpstreams) upstreams, found \(cluster.upstreams.count)")
            } else if cluster.upstreams.allSatisfy(\.backup) {
                report(.cluster(index, field: "upstreams"), "every upstream is `backup: true`; expected at least one primary (backups serve only while no primary is up)")
            }
            for (upstreamIndex, upstream) in cluster.upstreams.enumerated() where !UpstreamConfig.weightRange.contains(upstream.weight) {
                report(.upstream(cluster: index, index: upstreamIndex), "expected `weight` as an integer in \(UpstreamConfig.weightRange), found \(upstream.weight)")
            }
            if !ClusterConfig.retriesRange.contains(cluster.retries) {
                report(.cluster(index, field: "retries"), "expected `retries` as an integer in \(ClusterConfig.retriesRange)")
            }
            if let health = cluster.healthCheck {
                let subject = ProxyConfigProblem.Subject.cluster(index, field: "health_check")
                check(health.interval, "`interval`", subject, allowZero: false)
                check(health.timeout, "`timeout`", subject, allowZero: false)
                if !HealthCheck.countRange.contains(health.rise) || !HealthCheck.countRange.contains(health.fall) {
                    report(subject, "expected `rise` and `fall` as integers in \(HealthCheck.countRange)")
                }
                if health.timeout > health.interval { report(subject, "expected `timeout` no longer than `interval`") }
            }
            if let passive = cluster.passiveHealth {
                let subject = ProxyConfigProblem.Subject.cluster(index, field: "passive_health")
                if !PassiveHealth.failuresRange.contains(passive.failures) {
                    report(subject, "expected `failures` as an integer in \(PassiveHealth.failuresRange)")
                }
                check(passive.ejection, "`ejection`", subject, allowZero: false)
            }
        }
        var listenerNames = Set<String>()
        var binds = BindConflicts(dualStack: dualStack)
        for (index, listener) in listeners.enumerated() {
            if let problem = Self.nameProblem(listener.name) { report(.listener(index, field: "name"), "listener name: \(problem)") }
            if !clusterNames.contains(listener.cluster) {
                report(.listener(index, field: "cluster"), "unknown cluster `\(listener.cluster)`; expected one of \(clusters.prefix(10).map(\.name).joined(separator: ", "))\(clusters.count > 10 ? ", …" : "")")
            }
            if !listenerNames.insert(listener.name).inserted {
                report(.listener(index, field: nil), "a second listener named `\(listener.name)`; expected unique names")
            }
            if let clash = binds.add(listener.address, owner: "listener `\(listener.name)`") {
                report(.listener(index, field: "bind"), clash)
            }
            check(listener.connectTimeout, "`connect_timeout`", .listener(index, field: "connect_timeout"), allowZero: false)
            if let idle = listener.idleTimeout { check(idle, "`idle_timeout`", .listener(index, field: "idle_timeout"), allowZero: false) }
            if !ListenerConfig.maxConnectionsRange.contains(listener.maxConnections) {
                report(.listener(index, field: "max_connections"), "expected `max_connections` as an integer in \(ListenerConfig.maxConnectionsRange)")
            }
        }
        if let metricsAddress, let clash = binds.add(metricsAddress, owner: "`metrics`") {
            report(.topLevel("metrics"), clash)
        }
        check(drainTimeout, "`drain_timeout`", .topLevel("drain_timeout"), allowZero: true)
        check(dnsRefresh, "`dns_refresh`", .topLevel("dns_refresh"), allowZero: false)
        if let accessLogFile, !accessLogFile.hasPrefix("/") {
            report(.topLevel("access_log_file"), "expected `access_log_file` as an absolute path")
        }
        if let endpointsCgroup, !endpointsCgroup.hasPrefix("/") {
            report(.topLevel("endpoints_cgroup"), "expected `endpoints_cgroup` as an absolute path to a cgroup v2 directory")
        }
        return found
    }

    /// Why `duration` is out of range for `what`, or nil.
    static func durationProblem(_ duration: Duration, _ what: String, allowZero: Bool) -> String? {
        let lowest: Duration = allowZero ? .zero : .milliseconds(1)
        guard duration >= lowest, duration <= .configurationMaximum else {
            return "expected \(what) from \(allowZero ? "0" : "1ms") to 366 days (8784h)"
        }
        return nil
    }

    /// Why `name` cannot name a listener or cluster, or nil when it can: 1 to 128 characters, none
    /// a control character, a space or a line break (names go into log lines and metric labels).
    static func nameProblem(_ name: String) -> String? {
        if name.isEmpty || name.count > 128 { return "expected 1 to 128 characters" }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.properties.generalCategory == .format || $0.properties.isWhitespace }) {
            return "`\(name)` has a control character or a space; expected a name without (it goes into log lines and metric labels)"
        }
        return nil
    }
}

/// Which bound addresses would collide in the kernel (EADDRINUSE at bind), found in constant time
/// per address: per port, the exact addresses seen and who owns the wildcards and the first address
/// of each family.
public struct BindConflicts {
    private struct PortUse {
        var exact: [IPAddress: String] = [:]
        var anyV4: String?
        var anyV6: String?
        var wildcardV4: String?
        var wildcardV6: String?
    }

    private var ports: [UInt16: PortUse] = [:]
    private let dualStack: Bool

    /// `dualStack`: an IPv6 wildcard also takes the port for IPv4 (IPV6_V6ONLY off).
    public init(dualStack: Bool) { self.dualStack = dualStack }

    /// Whether IPv6 sockets on this host also take IPv4 (`net.ipv6.bindv6only` is 0, the default),
    /// read once. The proxy leaves `IPV6_V6ONLY` as the host sets it.
    public static let hostIsDualStack: Bool = {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv6/bindv6only", encoding: .utf8) else { return true }
        return text.trimmingCharacters(in: .whitespacesAndNewlines) == "0"
    }()

    /// Records `address` for `owner`; returns what it collides with, or nil (port 0 and Unix paths
    /// never collide here).
    public mutating func add(_ address: SocketAddress, owner: String) -> String? {
        guard case .ip(let ip, let port) = address, port != 0 else { return nil }
        var use = ports[port] ?? PortUse()
        defer { ports[port] = use }
        let wildcard = ip == (ip.isIPv4 ? IPAddress.anyV4 : IPAddress.anyV6)
        if let other = use.exact[ip] { return "\(owner) binds \(address), as \(other) does; expected one socket per address" }
        let clash: String?
        if ip.isIPv4 {
            clash = use.wildcardV4 ?? (dualStack ? use.wildcardV6 : nil) ?? (wildcard ? use.anyV4 : nil)
        } else {
            clash = use.wildcardV6 ?? (wildcard ? (use.anyV6 ?? (dualStack ? use.anyV4 : nil)) : nil)
        }
        if let clash {
            return "\(owner) binds \(address), which collides with \(clash) on port \(port) (a wildcard address takes the port for every address of its family\(dualStack ? ", and [::] for IPv4 too" : "")); expected other ports"
        }
        let description = "\(owner) (\(address))"
        use.exact[ip] = description
        if ip.isIPv4 {
            use.anyV4 = use.anyV4 ?? description
            if wildcard { use.wildcardV4 = description }
        } else {
            use.anyV6 = use.anyV6 ?? description
            if wildcard { use.wildcardV6 = description }
        }
        return nil
    }
}

extension IPAddress {
    static let anyV4 = IPAddress("0.0.0.0")!
    static let anyV6 = IPAddress("::")!
}

extension String {
    /// The text with control and format characters (and other invisible ones) written as `\u{…}`
    /// escapes (`\n`, `\r`, `\t` as themselves escaped), so messages never carry raw terminal bytes.
    var escapingControlCharacters: String {
        var result = ""
        for scalar in unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                let category = scalar.properties.generalCategory
                if category == .control || category == .format || category == .lineSeparator || category == .paragraphSeparator || category == .surrogate || category == .privateUse {
                    result += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result
    }
}
