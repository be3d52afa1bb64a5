import StraitNet
import StraitProxy
import Testing

@Suite("Configuration")
struct ConfigTests {
    let valid = """
        listeners:
          - name: web
            bind: 127.0.0.1:6000
            cluster: backend
            datapath: sockmap
            connect_timeout: 250ms
            idle_timeout: none
            max_connections: 100
            max_in_flight: 2MiB
        clusters:
          - name: backend
            balance: consistent_hash
            upstreams:
              - { address: 127.0.0.1:5201, weight: 2 }
              - "[::1]:5202"
            health_check: { interval: 2s, timeout: 1s, rise: 3, fall: 2 }
        metrics: 127.0.0.1:9100
        drain_timeout: 10s
        access_log: false
        """

    @Test("a complete file reads into the expected values")
    func validFile() throws {
        let config = try ProxyConfigLoader.parse(valid, file: "strait.yaml")
        #expect(config.listeners.count == 1)
        let listener = config.listeners[0]
        #expect(listener.address == SocketAddress(parsing: "127.0.0.1:6000"))
        #expect(listener.datapath == .sockmap)
        #expect(listener.connectTimeout == .milliseconds(250))
        #expect(listener.idleTimeout == nil)
        #expect(listener.maxConnections == 100)
        #expect(listener.maxInFlight == 2 << 20)
        let cluster = config.clusters[0]
        #expect(cluster.balancing == .consistentHash)
        #expect(cluster.upstreams.map(\.weight) == [2, 1])
        #expect(cluster.upstreams[1].address == SocketAddress(parsing: "[::1]:5202"))
        #expect(cluster.healthCheck == HealthCheck(interval: .seconds(2), timeout: .seconds(1), rise: 3, fall: 2))
        #expect(config.metricsAddress == SocketAddress(parsing: "127.0.0.1:9100"))
        #expect(config.drainTimeout == .seconds(10))
        #expect(config.accessLog == false)
    }

    /// Each mistake: the text, and the line, column and words the error must carry.
    @Test("every mistake names file, line, column and what was expected", arguments: [
        ("listeners: []\nclusters: []\n", 2, 11, "`clusters` as a non-empty list"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n    datapath: kernel\n", 7, 15, "one of copy, splice, sockmap, skmsg, auto"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:99999\n    cluster: b\n", 5, 11, "host:port"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: nope\n", 6, 14, "unknown cluster `nope`"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\n    helth_check: {}\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n", 4, 5, "unknown key `helth_check`"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\n    health_check: { interval: soon }\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n", 4, 31, "duration"),
        ("clusters:\n  - name: b\n    upstreams:\n      - { address: 127.0.0.1:1, weight: 0 }\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n", 4, 41, "integer in 1...1000"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - cluster: b\n", 5, 5, "needs `bind`"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n    max_in_flight: 1KiB\n", 7, 20, "size in 64KiB...1024MiB"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1]\nlisteners:\n  - bind: 127.0.0.1:6000\n    cluster: b\n    max_in_flight: lots\n", 7, 20, "size in 64KiB...1024MiB"),
        ("clusters:\n  - name: b\n    upstreams: [127.0.0.1:1\nlisteners: x\n", 4, 10, "invalid YAML"),
    ])
    func mistakes(yaml: String, line: Int, column: Int, expected: String) {
        do {
            _ = try ProxyConfigLoader.parse(yaml, file: "bad.yaml")
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect(error.file == "bad.yaml")
            #expect(error.line == line && error.column == column, "\(error)")
            #expect(error.message.contains(expected), "\(error)")
            #expect(error.description.hasPrefix("bad.yaml:\(error.line):\(error.column): "))
        }
    }

    @Test("a missing file is an error naming it")
    func missingFile() {
        #expect(throws: ProxyConfigError.self) { try ProxyConfigLoader.load(path: "/nonexistent/strait-sprx.yaml") }
    }
}
