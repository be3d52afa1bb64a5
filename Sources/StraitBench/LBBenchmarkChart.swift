import StraitBenchSupport

/// `strait bench lb --svg`: short connections per second against the number of services, one
/// line per method (log x axis), drawn with the shared ``SVGChart``.
public struct LBBenchmarkChart {
    /// The measurement drawn.
    public let report: LBBenchmark.Report

    /// A chart of `report`; nothing is drawn until ``render()``.
    public init(report: LBBenchmark.Report) { self.report = report }

    /// The SVG document as text. Pure: writes no file.
    public func render() -> String {
        let colors: [LBBenchmark.Method: String] = [.straitLB: "#1f77b4", .iptables: "#d62728", .nftables: "#ff7f0e", .direct: "#2ca02c"]
        var chart = SVGChart(
            title: "Short connections per second (connect, 64 B request and answer, close)",
            yLabel: "connections/s",
            series: LBBenchmark.Method.allCases.map { method in
                SVGChart.Series(
                    name: method.rawValue, color: colors[method]!,
                    points: report.rows.filter { $0.method == method }.map { (x: $0.services, y: $0.shortPerSecond) })
            })
        chart.xLabel = "services"
        chart.xTick = { String($0) }
        return chart.render()
    }
}
