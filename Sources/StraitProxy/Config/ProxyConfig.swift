import StraitNet
#if canImport(Glibc)
import Glibc
#endif
import StraitSystem

/// How a listener moves bytes between a client and its upstream.
public enum Datapath: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    /// Userspace reads into a ``LinkBuffer`` and writes it out (two copies per byte).
    case copy
    /// `splice(2)` socket → pipe → socket; pages move, bytes are not copied through userspace.
    case splice
    /// An SK_SKB verdict program redirects each socket's bytes to its peer's egress in the kernel.
    case sockmap
    /// For endpoints on this host inside the configured endpoints cgroup: an `sk_msg` program puts
    /// each endpoint's sends straight into the proxy's socket facing the other endpoint (see
    /// ``EndpointForwarder``); other connections, and bytes sent before the switch, go on ``copy``.
    case skmsg
    /// Per connection: ``skmsg`` where an endpoint is local and in the endpoints cgroup, else
    /// starts on ``copy`` and moves to ``sockmap`` once its traffic looks interactive (small
    /// request/response messages); see ``AutoRule``.
    case auto

    /// The name the configuration file, metric labels and the status use (`copy`, `splice`, …).
    public var description: String { rawValue }
}

/// How a cluster picks an upstream for a new connection.
public enum Balancing: String, Sendable, CaseIterable {
    /// Smooth weighted round robin (nginx's): spreads by weight without bursts to one upstream.
    case roundRobin = "round_robin"
    /// The healthy upstream with the fewest active connections relative to its weight.
    case leastConnections = "least_connections"
    /// A hash ring over the client's IP address: the same client lands on the same upstream, and
    /// when an upstream leaves only the clients it had move.
    case consistentHash = "consistent_hash"
}

/// Active TCP health checking of a cluster's upstreams: a connect every `interval`; `fall`
/// failures in a row mark an upstream down, `rise` successes in a row mark it up again.
public struct HealthCheck: Sendable, Equatable {
    /// Time from one probe of an upstream to the next (the first runs at once); 1 ms to 366 days.
    public var interval: Duration = .seconds(2)
    /// How long a probe's connect may take before it counts as a failure; at most ``interval``.
    public var timeout: Duration = .seconds(1)
    /// Successful probes in a row that bring a down upstream back up (``countRange``).
    public var rise = 2
    /// Failed probes in a row that mark an upstream down (``countRange``).
    public var fall = 3

    /// A check with the file's defaults: a probe every 2 s, 1 s to connect, up after 2 successes,
    /// down after 3 failures. The ranges are checked by ``ProxyConfig/validate(dualStack:)``, not here.
    public init(interval: Duration = .seconds(2), timeout: Duration = .seconds(1), rise: Int = 2, fall: Int = 3) {
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
    }
}

/// One upstream server of a cluster.
public struct UpstreamConfig: Sendable, Equatable {
    /// Where to connect.
    public var address: SocketAddress
    /// The share of new connections relative to the cluster's other upstreams.
    public var weight: Int
    /// Used only while no primary (non-backup) upstream of the cluster is up (HAProxy's `backup`).
    public var backup: Bool
    /// The DNS name `address` was resolved from (``UpstreamResolver``), re-resolved every
    /// ``ProxyConfig/dnsRefresh``; nil for an upstream given as an IP address.
    public var hostname: String?

    /// An upstream at `address`, a primary of weight 1 unless told; `hostname` only when `address`
    /// was resolved from that name. The weight's range is checked by
    /// ``ProxyConfig/validate(dualStack:)``, not here.
    public init(address: SocketAddress, weight: Int = 1, backup: Bool = false, hostname: String? = nil) {
        self.address = address
        self.weight = weight
        self.backup = backup
        self.hostname = hostname
    }
}

/// Passive health checking (outlier ejection): `failures` connect failures in a row to an upstream,
/// seen by real connections, take it out of the balancer for `ejection`; each further ejection
/// without a success in between doubles it, up to 32 times `ejection`. A success resets both.
public struct PassiveHealth: Sendable, Equatable {
    /// Consecutive connect failures (refused or timed out) that eject an upstream.
    public var failures: Int
    /// How long the first ejection lasts.
    public var ejection: Duration

    /// The values `failures` may have.
    public static let failuresRange = 1...1000

    /// Ejection after 5 connect failures in a row, for 30 s the first time (the file's defaults).
    /// Checked by ``ProxyConfig/validate(dualStack:)``, not here.
    public init(failures: Int = 5, ejection: Duration = .seconds(30)) {
        self.failures = failures
        self.ejection = ejection
    }
}

/// A PROXY protocol version a cluster sends its upstreams (`send_proxy`) or a listener requires
/// from its clients (`accept_proxy`).
public enum ProxyProtocolVersion: String, Sendable, CaseIterable {
    /// The binary version 2 (``ProxyHeaderV2``).
    case v2
}

/// A named set of upstreams and how to choose among them.
public struct ClusterConfig: Sendable, Equatable {
    /// What a listener's `cluster:` names; unique, 1 to 128 characters with no space or control
    /// character (it goes into log lines and metric labels).
    public var name: String
    /// The servers its connections go to: 1 to ``ProxyConfig/maximumUpstreams``, at least one of
    /// them not `backup`.
    public var upstreams: [UpstreamConfig]
    /// How a new connection picks among the upstreams that are up.
    public var balancing: Balancing
    /// Nil: no active checks, every upstream is considered up.
    public var healthCheck: HealthCheck?
    /// Nil: connect failures of real connections eject nothing.
    public var passiveHealth: PassiveHealth?
    /// On a connect failure or timeout, how many other healthy upstreams a connection tries before
    /// the client is closed (0: none).
    public var retries: Int

    /// Sent first on every connection to an upstream, before any client byte (nil: nothing): the
    /// client's address and the address it reached, for servers behind Strait.
    public var sendProxy: ProxyProtocolVersion?

    /// The values `retries` may have.
    public static let retriesRange = 0...10

    /// A cluster of `upstreams`: round robin, no health checks, no retries and no PROXY header
    /// unless told. Checked by ``ProxyConfig/validate(dualStack:)``, not here.
    public init(
        name: String, upstreams: [UpstreamConfig], balancing: Balancing = .roundRobin, healthCheck: HealthCheck? = nil,
        passiveHealth: PassiveHealth? = nil, retries: Int = 0, sendProxy: ProxyProtocolVersion? = nil
    ) {
        self.sendProxy = sendProxy
        self.name = name
        self.upstreams = upstreams
        self.balancing = balancing
        self.healthCheck = healthCheck
        self.passiveHealth = passiveHealth
        self.retries = retries
    }
}

/// A bound address whose connections go to one cluster.
public struct ListenerConfig: Sendable, Equatable {
    /// Names the listener in logs, metric labels and the status; unique, 1 to 128 characters with
    /// no space or control character.
    public var name: String
    /// Where it binds; port 0 lets the kernel pick (the status shows the port). Addresses that would
    /// collide at bind are refused by ``ProxyConfig/validate(dualStack:)``.
    public var address: SocketAddress
    /// The ``ClusterConfig/name`` its connections go to; it must exist.
    public var cluster: String
    /// How its connections' bytes move (``Datapath``).
    public var datapath: Datapath
    /// How long a connect to an upstream may take before it counts as a failure (and, with
    /// `retries`, the next upstream is tried); also how long a client has to send its PROXY header
    /// under ``acceptProxy``.
    public var connectTimeout: Duration
    /// Close a connection when neither side sent anything for this long (nil: never). On the
    /// sockmap datapath userspace cannot see bytes; the kernel's per-pair counters are read instead.
    public var idleTimeout: Duration?
    /// At this many connections the listener stops accepting: further clients wait in the
    /// kernel's listen queue (their handshake completes there) until a connection ends.
    public var maxConnections: Int
    /// Every client must start with this PROXY protocol header (nil: none), as sent by a balancer
    /// in front of the listener: its source address becomes the client's (balancing, access log,
    /// `send_proxy`). The header must arrive within ``connectTimeout`` and fit in
    /// ``ProxyHeaderReader/maximumLength`` bytes; it is never forwarded.
    public var acceptProxy: ProxyProtocolVersion?
    /// Most bytes of one direction the kernel may hold on the way, or nil for the defaults.
    /// Sockmap: between reading them from one socket and the other socket's send buffer taking them
    /// (the psock backlog, which has no limit of its own); above it the direction is copied in
    /// userspace and the sender waits on TCP's window, so kernel memory per connection is at most
    /// both sockets' buffers plus this, each way. nil leaves sockmap unlimited, because a
    /// connection whose two directions are both throttled at once can stall (README, limitations).
    /// skmsg: unread bytes in an endpoint's ingress queue before the other endpoint's sends go back
    /// to egress; nil means ``defaultMaxInFlight``.
    public var maxInFlight: Int?

    /// 4 MiB, the size of TCP's largest default send buffer (`tcp_wmem`), so a peer that reads
    /// never notices it.
    public static let defaultMaxInFlight = 4 << 20

    /// A listener with the file's defaults: `auto`, 5 s to connect, 1 h idle timeout, at most
    /// 10 000 connections, no `max_in_flight`, no PROXY header. Checked by
    /// ``ProxyConfig/validate(dualStack:)``, not here.
    public init(
        name: String, address: SocketAddress, cluster: String, datapath: Datapath = .auto,
        connectTimeout: Duration = .seconds(5), idleTimeout: Duration? = .seconds(3600), maxConnections: Int = 10_000,
        maxInFlight: Int? = nil, acceptProxy: ProxyProtocolVersion? = nil
    ) {
        self.acceptProxy = acceptProxy
        self.maxInFlight = maxInFlight
        self.name = name
        self.address = address
        self.cluster = cluster
        self.datapath = datapath
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }
}

/// A whole proxy configuration: what ``ProxyConfigLoader`` reads from YAML, or what the quick-start
/// flags build. A plain value; ``Proxy/reload(_:)`` applies a new one.
public struct ProxyConfig: Sendable, Equatable {
    /// The listeners, at most ``maximumListeners``, with unique names and addresses that do not
    /// collide at bind.
    public var listeners: [ListenerConfig]
    /// The clusters the listeners send to, at most ``maximumClusters``, with unique names.
    public var clusters: [ClusterConfig]
    /// `host:port` of the Prometheus endpoint (`GET /metrics`); nil: none.
    public var metricsAddress: SocketAddress?
    /// How long SIGTERM waits for connections to finish before closing them.
    public var drainTimeout: Duration
    /// One log line per finished connection.
    public var accessLog: Bool
    /// The cgroup v2 directory whose processes' sockets may use the ``Datapath/skmsg`` datapath
    /// (local clients and upstream servers); nil: that datapath is off. Read at start only.
    public var endpointsCgroup: String?
    /// With ``accessLog``: append the lines to this file as JSON lines instead of logging them.
    /// Opened at start only (``AccessLog``).
    public var accessLogFile: String?
    /// How often upstreams given by DNS name are resolved again (``ProxyController``).
    public var dnsRefresh: Duration = .seconds(30)

    /// A configuration of `listeners` and `clusters`, the rest at the file's defaults unless told: no
    /// metrics endpoint, 30 s drain, access log on (to the logger), no skmsg cgroup, names
    /// re-resolved every 30 s. Checked by ``validate(dualStack:)``, not here.
    public init(
        listeners: [ListenerConfig], clusters: [ClusterConfig], metricsAddress: SocketAddress? = nil,
        drainTimeout: Duration = .seconds(30), accessLog: Bool = true, endpointsCgroup: String? = nil
    ) {
        self.listeners = listeners
        self.clusters = clusters
        self.metricsAddress = metricsAddress
        self.drainTimeout = drainTimeout
        self.accessLog = accessLog
        self.endpointsCgroup = endpointsCgroup
    }

    /// The port of `metrics:` when the file gives only a host (`metrics: 127.0.0.1`). 9479 is not
    /// the port of a well-known exporter (node_exporter has 9100) and sits beside the node agent's
    /// 9478, so a host running both keeps them apart.
    public static let defaultMetricsPort: UInt16 = 9479

    /// The quick start: one listener, one round-robin cluster with health checks.
    public static func quickStart(listen: SocketAddress, upstreams: [SocketAddress], datapath: Datapath) -> ProxyConfig {
        ProxyConfig(
            listeners: [ListenerConfig(name: "default", address: listen, cluster: "default", datapath: datapath)],
            clusters: [ClusterConfig(name: "default", upstreams: upstreams.map { UpstreamConfig(address: $0) }, healthCheck: HealthCheck())]
        )
    }
}

extension SocketAddress {
    /// Parses `1.2.3.4:80`, `[2001:db8::1]:80` or `localhost:80`. An IPv6 address must be in
    /// brackets: `::1:19001` is refused, since it could also be read as the address `::1:19001`
    /// with no port.
    public init?(parsing text: String) {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
            guard host.contains(":") else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else { return nil }
        }
        if host == "localhost" { host = "127.0.0.1" }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), let port = UInt16(portText), let address = IPAddress(String(host)) else { return nil }
        self = .ip(address, port: port)
    }
}

extension Duration {
    /// The longest duration a configuration may give (366 days): far beyond any useful timeout,
    /// and far below what a loop's nanosecond clock can add without overflowing.
    public static let configurationMaximum: Duration = .seconds(366 * 86_400)

    /// Parses `250ms`, `2s`, `5m`, `1h`, a compound of them largest unit first (`1m30s`,
    /// `1h5m30s`, `2s500ms`: each unit at most once), or a bare number of seconds. Each number is
    /// decimal digits with an optional fraction of up to 9 digits (no sign, exponent, space, `inf`
    /// or `nan`); the sum is at most ``configurationMaximum``. Exact: the value is computed in
    /// integers, never through a floating-point conversion that could trap.
    init?(parsing text: String) {
        let units: [(name: Substring, nanoseconds: Int128)] = [("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)]
        var rest = Substring(text)
        var total: Int128 = 0
        var nextUnit = 0  // units must come largest first, each once
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCIIDigit || $0 == "." }
            rest = rest.dropFirst(number.count)
            let unitName = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(unitName.count)
            let scale: Int128
            if unitName.isEmpty {
                // A bare number is seconds, and only on its own.
                guard total == 0, nextUnit == 0, rest.isEmpty, number.count == text.count else { return nil }
                scale = 1_000_000_000
            } else {
                guard let index = units.firstIndex(where: { $0.name == unitName }), index >= nextUnit else { return nil }
                nextUnit = index + 1
                scale = units[index].nanoseconds
            }
            guard let value = Self.nanoseconds(number, scale: scale) else { return nil }
            total += value
            guard total <= Int128(Self.configurationMaximum.wholeNanoseconds) else { return nil }
        }
        self = .nanoseconds(Int64(total))
    }

    /// `number` (digits, an optional fraction of up to 9 digits) times `scale` nanoseconds, exact.
    private static func nanoseconds(_ number: Substring, scale: Int128) -> Int128? {
        let parts = number.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.count <= 12, whole.allSatisfy(\.isASCIIDigit) else { return nil }
        let fraction = parts.count == 2 ? parts[1] : ""
        guard parts.count == 1 || !fraction.isEmpty, fraction.count <= 9, fraction.allSatisfy(\.isASCIIDigit) else { return nil }
        guard let wholeValue = Int128(whole), let fractionValue = fraction.isEmpty ? 0 : Int128(fraction) else { return nil }
        var divisor: Int128 = 1
        for _ in 0..<fraction.count { divisor *= 10 }
        return wholeValue * scale + fractionValue * scale / divisor
    }
}

extension Duration {
    /// Whole nanoseconds, for the loops' monotonic clock; negative durations count as zero.
    var wholeNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}

extension SocketAddress {
    /// The socket(2) domain.
    var domain: CInt {
        if case .ip(let address, _) = self { return address.isIPv4 ? AF_INET : AF_INET6 }
        return AF_UNIX
    }
}

extension Character {
    /// `0` to `9` only (`isNumber` also takes other scripts' digits and fractions such as `½`).
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
