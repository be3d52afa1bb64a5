import StraitProxy
import Testing

@Suite("metrics endpoint: request reader")
struct MetricsRequestTests {
    func classify(_ text: String) -> MetricsRequest {
        Array(text.utf8).withUnsafeBytes { MetricsRequest.classify($0) }
    }

    @Test("GET /metrics (with a query, any version, CRLF or bare LF) is metrics; other complete requests are not")
    func verdicts() {
        #expect(classify("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == .metrics)
        #expect(classify("GET /metrics?x=1 HTTP/1.0\r\n\r\n") == .metrics)
        #expect(classify("GET /metrics HTTP/1.1\n\n") == .metrics)
        #expect(classify("GET /metricsfoo HTTP/1.1\r\n\r\n") == .other)
        #expect(classify("POST /metrics HTTP/1.1\r\n\r\n") == .other)
        #expect(classify("GET  /metrics HTTP/1.1\r\n\r\n") == .other)
        #expect(classify("\r\n\r\n") == .other)
    }

    @Test("an unfinished header waits up to the bound, then is refused")
    func bound() {
        #expect(classify("GET /metrics HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(classify("") == .incomplete)
        let long = "GET /metrics HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: MetricsRequest.maximumHeaderBytes)
        #expect(classify(long) == .tooLarge)
        #expect(classify(String(repeating: "b", count: 5 << 20)) == .tooLarge, "a 5 MiB header is refused, not buffered")
    }
}
