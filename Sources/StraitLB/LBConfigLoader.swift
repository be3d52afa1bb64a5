import StraitKernelABI
import StraitNet
import StraitProxy
import Yams

/// A mistake in an lb configuration, located as `file:line:column: message` (the same error the
/// proxy's configuration reports, from the same readers).
public typealias LBConfigError = ProxyConfigError

/// Reads an ``LBConfig`` from YAML, checking every field and rejecting unknown keys, with the
/// proxy configuration's readers (so both report mistakes alike).
///
/// ```yaml
/// cgroup: /sys/fs/cgroup/unified/apps    # sockets made in this cgroup v2 (or below) are balanced
/// metrics: 127.0.0.1:9300                # optional Prometheus endpoint
/// services:
///   - name: web
///     address: 198.18.0.10:80            # the virtual address clients connect to
///     protocol: tcp                      # tcp | udp
///     policy: maglev                     # maglev | random (weighted)
///     backends:
///       - { address: 198.18.1.1:8080, weight: 2 }
///       - 198.18.1.2:8080
///     health_check: { interval: 2s, timeout: 1s, rise: 2, fall: 3 }
/// ```
public enum LBConfigLoader {
    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(LBConfigError) -> LBConfig {
        try parse(try ProxyConfigLoader.text(path: path), file: path)
    }

    /// Checks YAML text; `file` names it in errors.
    public static func parse(_ yaml: String, file: String) throws(LBConfigError) -> LBConfig {
        try config(try ProxyConfigLoader.root(yaml, file: file, expected: "a mapping with `cgroup` and `services`"), ConfigNodeReader(file: file))
    }

    /// Checks an already composed `lb:` section of another file (the node agent's), in the same
    /// schema but without `metrics`: the agent serves the lb's series on its own endpoint.
    public static func section(from node: Node, file: String) throws(LBConfigError) -> LBConfig {
        let reader = ConfigNodeReader(file: file)
        if let metrics = node.mapping?.first(where: { $0.key.string == "metrics" })?.key {
            throw reader.error(metrics, "`metrics` is not set per part here: the agent's /metrics shows the lb's series; remove it from `lb`")
        }
        return try config(node, reader, what: "`lb`")
    }

    static func config(_ root: Node, _ reader: ConfigNodeReader, what: String = "the configuration") throws(LBConfigError) -> LBConfig {
        let top = try reader.fields(root, what, allowed: ["cgroup", "services", "metrics"])
        let cgroupNode = try reader.required(top, "cgroup", in: root, what)
        let cgroup = try reader.string(cgroupNode, "`cgroup` (a cgroup v2 directory)")
        guard cgroup.hasPrefix("/") else { throw reader.error(cgroupNode, "expected `cgroup` as an absolute path to a cgroup v2 directory") }
        var services: [LBServiceConfig] = []
        for node in try reader.list(try reader.required(top, "services", in: root, what), "`services`") {
            let service = try self.service(node, reader)
            if services.contains(where: { $0.name == service.name }) {
                throw reader.error(node, "a second service named `\(service.name)`; expected unique names")
            }
            if services.contains(where: { $0.address == service.address && $0.port == service.port && $0.transport == service.transport }) {
                throw reader.error(node, "a second service on \(service.endpoint); expected one service per address, port and protocol")
            }
            services.append(service)
        }
        var config = LBConfig(cgroup: cgroup, services: services)
        if let node = top["metrics"] { config.metricsAddress = try reader.address(node, "`metrics`") }
        return config
    }

    static func service(_ node: Node, _ reader: ConfigNodeReader) throws(LBConfigError) -> LBServiceConfig {
        let what = "a service"
        let entries = try reader.fields(node, what, allowed: ["name", "address", "protocol", "policy", "backends", "health_check"])
        let name = try reader.string(try reader.required(entries, "name", in: node, what), "the service's `name`")
        let addressNode = try reader.required(entries, "address", in: node, what)
        guard case .ip(let address, let port) = try reader.address(addressNode, "the service's `address`"), port != 0 else {
            throw reader.error(addressNode, "expected the service's `address` as IP:port with a port other than 0")
        }
        var backends: [LBBackendConfig] = []
        for backendNode in try reader.list(try reader.required(entries, "backends", in: node, what), "`backends`") {
            let backend = try self.backend(backendNode, reader)
            guard backend.address.isIPv4 == address.isIPv4 else {
                throw reader.error(backendNode, "expected an \(address.isIPv4 ? "IPv4" : "IPv6") backend, as the service's address is")
            }
            if backends.contains(where: { $0.address == backend.address && $0.port == backend.port }) {
                throw reader.error(backendNode, "a second backend \(backend.endpoint); expected each backend once")
            }
            backends.append(backend)
        }
        guard backends.count <= Int(STRAIT_LB_MAX_BACKENDS) else {
            throw reader.error(node, "\(backends.count) backends; a service holds at most \(STRAIT_LB_MAX_BACKENDS)")
        }
        var service = LBServiceConfig(name: name, address: address, port: port, backends: backends)
        if let value = entries["protocol"] { service.transport = try reader.choice(value, "`protocol`") }
        if let value = entries["policy"] { service.policy = try reader.choice(value, "`policy`") }
        if let value = entries["health_check"] {
            if service.transport == .udp { throw reader.error(value, "health checks are TCP connects; a UDP service cannot have one") }
            let health = try reader.healthCheck(value)
            guard health.timeout <= health.interval else { throw reader.error(value, "expected `timeout` no longer than `interval`") }
            service.healthCheck = health
        }
        return service
    }

    static func backend(_ node: Node, _ reader: ConfigNodeReader) throws(LBConfigError) -> LBBackendConfig {
        if node.scalar != nil {
            guard case .ip(let address, let port) = try reader.address(node, "a backend"), port != 0 else {
                throw reader.error(node, "expected a backend as IP:port with a port other than 0")
            }
            return LBBackendConfig(address: address, port: port)
        }
        let entries = try reader.fields(node, "a backend", allowed: ["address", "weight"])
        let addressNode = try reader.required(entries, "address", in: node, "a backend")
        guard case .ip(let address, let port) = try reader.address(addressNode, "`address`"), port != 0 else {
            throw reader.error(addressNode, "expected the backend's `address` as IP:port with a port other than 0")
        }
        let weight = try entries["weight"].map { node throws(LBConfigError) in try reader.integer(node, "`weight`", range: 1...1000) } ?? 1
        return LBBackendConfig(address: address, port: port, weight: weight)
    }
}
