import Foundation
import StraitExposition
import StraitLB
import Testing

@Suite("Prometheus text for scrape-time values (no kernel)")
struct LBMetricsTests {
    /// A snapshot as the running lb publishes it (JSON), with one service `web` and `backends`:
    /// (endpoint, up, connects, datagrams).
    static func snapshot(backends: [(String, Bool, UInt64, UInt64)]) throws -> LBSnapshot {
        let listed = backends.enumerated().map { index, backend in
            #"{"id":\#(index + 1),"endpoint":"\#(backend.0)","weight":1,"up":\#(backend.1),"connects":\#(backend.2),"datagrams":\#(backend.3)}"#
        }
        let json = #"{"cgroup":"/sys/fs/cgroup/unified/apps","services":[{"name":"web","endpoint":"198.18.0.10:80/tcp","policy":"random","healthChecked":true,"backends":[\#(listed.joined(separator: ","))]}],"counters":{"balanced":7,"refused":2,"reversed":5}}"#
        return try JSONDecoder().decode(LBSnapshot.self, from: Data(json.utf8))
    }

    @Test("lb: every family has HELP and TYPE, counters end in _total, each backend is labelled")
    func lbExposition() throws {
        let text = LBMetrics.exposition(try Self.snapshot(backends: [("198.18.1.1:8080", true, 5, 0), ("198.18.1.2:8080", false, 2, 3)]))
        let lines = text.split(separator: "\n").map(String.init)
        let families = lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ").map(String.init) }
        #expect(families.map { $0[2] } == [
            "strait_lb_backend_up", "strait_lb_backend_connects_total", "strait_lb_backend_datagrams_total",
            "strait_lb_balanced_total", "strait_lb_refused_total", "strait_lb_reversed_total",
        ])
        for family in families {
            #expect(family[3] == (family[2].hasSuffix("_total") ? "counter" : "gauge"), "\(family)")
            let help = "# HELP \(family[2]) "
            #expect(lines.contains { $0.hasPrefix(help) && $0.count > help.count }, "no HELP for \(family[2])")
        }
        #expect(lines.contains("strait_lb_backend_up{service=\"web\",backend=\"198.18.1.1:8080\"} 1"))
        #expect(lines.contains("strait_lb_backend_up{service=\"web\",backend=\"198.18.1.2:8080\"} 0"))
        #expect(lines.contains("strait_lb_backend_connects_total{service=\"web\",backend=\"198.18.1.2:8080\"} 2"))
        #expect(lines.contains("strait_lb_backend_datagrams_total{service=\"web\",backend=\"198.18.1.2:8080\"} 3"))
        #expect(lines.contains("strait_lb_balanced_total 7") && lines.contains("strait_lb_refused_total 2") && lines.contains("strait_lb_reversed_total 5"))
    }

    @Test("lb: a backend that left the configuration leaves the exposition at the next scrape")
    func removedBackendGoes() throws {
        let both = LBMetrics.exposition(try Self.snapshot(backends: [("198.18.1.1:8080", true, 1, 0), ("198.18.1.2:8080", true, 1, 0)]))
        let one = LBMetrics.exposition(try Self.snapshot(backends: [("198.18.1.1:8080", true, 1, 0)]))
        #expect(both.contains("198.18.1.2:8080"))
        #expect(!one.contains("198.18.1.2:8080"))
    }

    @Test("label values and HELP are escaped; whole gauges print without a fraction")
    func escaping() {
        var text = PrometheusText()
        text.gauge("g", "a \\ and a\nnewline", [([("name", "a\"b\\c\nd")], 2)])
        text.gauge("h", "half", 0.5)
        text.counter("c_total", "plain", 3)
        text.counter("s_seconds_total", "seconds", seconds: 1.25)
        #expect(text.text == """
            # HELP g a \\\\ and a\\nnewline
            # TYPE g gauge
            g{name="a\\"b\\\\c\\nd"} 2
            # HELP h half
            # TYPE h gauge
            h 0.5
            # HELP c_total plain
            # TYPE c_total counter
            c_total 3
            # HELP s_seconds_total seconds
            # TYPE s_seconds_total counter
            s_seconds_total 1.25

            """)
    }
}
