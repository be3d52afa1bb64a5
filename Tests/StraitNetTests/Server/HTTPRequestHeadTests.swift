import StraitNet
import Testing

@Suite("PlainHTTPEndpoint: request reader")
struct HTTPRequestHeadTests {
    func classify(_ text: String) -> HTTPRequestHead {
        Array(text.utf8).withUnsafeBytes { HTTPRequestHead.classify($0) }
    }

    @Test("a complete request gives its method and path (query dropped, any version, CRLF or bare LF)")
    func verdicts() {
        #expect(classify("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == .request(method: "GET", path: "/metrics"))
        #expect(classify("GET /metrics?x=1 HTTP/1.0\r\n\r\n") == .request(method: "GET", path: "/metrics"))
        #expect(classify("HEAD /readyz HTTP/1.1\n\n") == .request(method: "HEAD", path: "/readyz"))
        #expect(classify("GET /metricsfoo HTTP/1.1\r\n\r\n") == .request(method: "GET", path: "/metricsfoo"))
        #expect(classify("GET  /metrics HTTP/1.1\r\n\r\n") == .malformed)
        #expect(classify("GET metrics HTTP/1.1\r\n\r\n") == .malformed)
        #expect(classify("\r\n\r\n") == .malformed)
    }

    @Test("an unfinished header waits up to the bound, then is refused")
    func bound() {
        #expect(classify("GET /metrics HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(classify("") == .incomplete)
        let long = "GET /metrics HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: HTTPRequestHead.maximumHeaderBytes)
        #expect(classify(long) == .tooLarge)
        #expect(classify(String(repeating: "b", count: 5 << 20)) == .tooLarge, "a 5 MiB header is refused, not buffered")
    }
}
