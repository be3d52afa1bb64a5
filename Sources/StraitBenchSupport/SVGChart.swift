import Foundation
import StraitSystem

/// A line chart of throughput by message size (log2 x axis), written as a standalone SVG.
public struct SVGChart {
    /// One line of the chart: a named, coloured list of points.
    public struct Series {
        /// The legend's text.
        public var name: String
        /// An SVG colour, written into the stroke as is (`#1f77b4`, `teal`).
        public var color: String
        /// Points in drawing order: `x` a positive count (drawn on a log2 axis), `y` in the chart's
        /// ``SVGChart/yLabel`` unit.
        public var points: [(x: Int, y: Double)]

        /// A series with `points`, drawn in `color`.
        public init(name: String, color: String, points: [(x: Int, y: Double)]) {
            self.name = name
            self.color = color
            self.points = points
        }
    }

    /// The heading drawn above the plot.
    public var title: String
    /// The y axis's label, with its unit (e.g. `Gbit/s`).
    public var yLabel: String
    /// The lines drawn, in legend order.
    public var series: [Series]
    /// A horizontal reference line, e.g. the AF_UNIX ceiling.
    public var reference: (label: String, value: Double)?
    /// What the (log2) x axis counts, and how its ticks read.
    public var xLabel = "message size (bytes per write)"
    /// How an x tick reads; by default a byte count (`4 KiB`).
    public var xTick: (Int) -> String = formatBytes

    /// A chart of `series`, optionally with a horizontal `reference` line; nothing is drawn until
    /// ``render(width:height:)``.
    public init(title: String, yLabel: String, series: [Series], reference: (label: String, value: Double)? = nil) {
        self.title = title
        self.yLabel = yLabel
        self.series = series
        self.reference = reference
    }

    /// The whole SVG document as text, `width` × `height` px; the y axis runs from 0 to 10% above
    /// the highest point or reference. Pure: builds a string, writes no file.
    public func render(width: Double = 720, height: Double = 420) -> String {
        let left = 70.0, right = 45.0, top = 40.0, bottom = 60.0
        let xs = series.flatMap { $0.points.map(\.x) }
        let minX = log2(Double(xs.min() ?? 1)), maxX = log2(Double(xs.max() ?? 2))
        let maxY = max(series.flatMap { $0.points.map(\.y) }.max() ?? 1, reference?.value ?? 0) * 1.1
        func px(_ x: Int) -> Double { left + (log2(Double(x)) - minX) / max(maxX - minX, 1) * (width - left - right) }
        func py(_ y: Double) -> Double { height - bottom - y / maxY * (height - top - bottom) }

        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="22" text-anchor="middle" font-size="15">\(escape(title))</text>
            <line x1="\(left)" y1="\(height - bottom)" x2="\(width - right)" y2="\(height - bottom)" stroke="black"/>
            <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="black"/>
            <text x="16" y="\(height / 2)" transform="rotate(-90 16 \(height / 2))" text-anchor="middle">\(escape(yLabel))</text>
            <text x="\(width / 2)" y="\(height - 14)" text-anchor="middle">\(escape(xLabel))</text>

            """
        for x in Set(xs).sorted() {
            svg += "<text x=\"\(px(x))\" y=\"\(height - bottom + 18)\" text-anchor=\"middle\">\(xTick(x))</text>\n"
        }
        for step in 0...4 {
            let value = maxY / 1.1 * Double(step) / 4
            svg += "<text x=\"\(left - 8)\" y=\"\(py(value) + 4)\" text-anchor=\"end\">\(String(format: "%.1f", value))</text>\n"
            svg += "<line x1=\"\(left)\" y1=\"\(py(value))\" x2=\"\(width - right)\" y2=\"\(py(value))\" stroke=\"#ddd\"/>\n"
        }
        if let reference {
            svg += "<line x1=\"\(left)\" y1=\"\(py(reference.value))\" x2=\"\(width - right)\" y2=\"\(py(reference.value))\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>\n"
            svg += "<text x=\"\(width - right - 4)\" y=\"\(py(reference.value) - 6)\" text-anchor=\"end\" fill=\"#555\">\(escape(reference.label))</text>\n"
        }
        for (index, line) in series.enumerated() {
            let path = line.points.map { "\(px($0.x)),\(py($0.y))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"2.5\" points=\"\(path)\"/>\n"
            for point in line.points {
                svg += "<circle cx=\"\(px(point.x))\" cy=\"\(py(point.y))\" r=\"3.5\" fill=\"\(line.color)\"/>\n"
            }
            let legendY = top + 8 + Double(index) * 18
            svg += "<rect x=\"\(left + 12)\" y=\"\(legendY - 9)\" width=\"14\" height=\"4\" fill=\"\(line.color)\"/>\n"
            svg += "<text x=\"\(left + 32)\" y=\"\(legendY - 3)\">\(escape(line.name))</text>\n"
        }
        return svg + "</svg>\n"
    }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
