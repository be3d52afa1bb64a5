import Foundation
import StraitBenchSupport
import Testing

@testable import StraitNetBench

@Suite("bench net reports")
struct ReportTests {
    /// A report as wrk 4.1 prints it with --latency.
    static let wrkReport = """
        Running 5s test @ http://127.0.0.1:47621/
          1 threads and 256 connections
          Thread Stats   Avg      Stdev     Max   +/- Stdev
            Latency     2.31ms    1.66ms  11.30ms   72.43%
            Req/Sec    96.48k     4.64k  114.67k    76.00%
          Latency Distribution
             50%  812.00us
             75%    3.15ms
             90%    5.32ms
             99%    1.20s
          480467 requests in 5.03s, 35.74MB read
        Requests/sec:  95513.44
        Transfer/sec:      7.10MB
        """

    @Test("wrk's requests/s and percentiles, in milliseconds whatever unit wrk chose")
    func parsesWrk() throws {
        let measurement = try HTTPBenchmark.parse(wrk: Self.wrkReport)
        #expect(measurement.requestsPerSecond == 95513.44)
        #expect(measurement.p50Milliseconds == 0.812)
        #expect(measurement.p99Milliseconds == 1200)
        #expect(throws: BenchmarkError.self) { try HTTPBenchmark.parse(wrk: "unable to connect to 127.0.0.1:47080 Connection refused") }
    }

    @Test("the JSON keys the issue asks for, with the RPC and allocation rows beside them")
    func jsonKeys() throws {
        let http = HTTPBenchmark.Row(
            connections: 256,
            straitnet: .init(requestsPerSecond: 150_000, p50Milliseconds: 0.7, p99Milliseconds: 3, peakRSSKiB: 20000),
            swiftnio: .init(requestsPerSecond: 90_000, p50Milliseconds: 1.5, p99Milliseconds: 7, peakRSSKiB: 14000))
        let rpc = RPCBenchmark.Row(
            payloadBytes: 128, callers: 16,
            straitnet: .init(calls: 1000, qps: 500_000, p50Microseconds: 20.4, p99Microseconds: 30.6, errors: 0),
            swiftnio: .init(calls: 900, qps: 400_000, p50Microseconds: 30, p99Microseconds: 60, errors: 0))
        let allocations = AllocationCount.Row(path: "http", straitnet: .init(allocations: 0, requests: 1000), swiftnio: .init(allocations: 5000, requests: 1000))

        let httpObject = try object(http)
        for key in ["connections", "straitnet_rps", "swiftnio_rps", "straitnet_p99_ms", "swiftnio_p99_ms"] {
            #expect(httpObject[key] != nil, "http entry lacks \(key)")
        }
        #expect(httpObject["straitnet_rps"] as? Double == 150_000)
        let rpcObject = try object(rpc)
        #expect(rpcObject["straitnet_qps"] as? Double == 500_000)
        #expect(rpcObject["straitnet_p99_ms"] as? Double == 0.031, "whole microseconds, in milliseconds")
        let allocationObject = try object(allocations)
        #expect(allocationObject["straitnet_per_request"] as? Double == 0)
        #expect(allocationObject["swiftnio_per_request"] as? Double == 5)
    }

    @Test("medians of repeated runs")
    func medians() {
        #expect(median([3, 1, 2]) == 2)
        #expect(median([4, 1, 3, 2]) == 2.5)
        let runs = [
            HTTPBenchmark.Measurement(requestsPerSecond: 100, p50Milliseconds: 1, p99Milliseconds: 9, peakRSSKiB: 10),
            HTTPBenchmark.Measurement(requestsPerSecond: 300, p50Milliseconds: 3, p99Milliseconds: 1, peakRSSKiB: 30),
            HTTPBenchmark.Measurement(requestsPerSecond: 200, p50Milliseconds: 2, p99Milliseconds: 5, peakRSSKiB: 20),
        ]
        #expect(HTTPBenchmark.Measurement.median(runs) == .init(requestsPerSecond: 200, p50Milliseconds: 2, p99Milliseconds: 5, peakRSSKiB: 30))
    }

    @Test("a server port from Strait's range that can be bound")
    func availablePort() throws {
        let port = BenchPorts.available(preferred: 47990)
        #expect((47000...47999).contains(port))
    }

    private func object(_ value: some Encodable) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? [String: Any] ?? [:]
    }
}
