import Foundation

extension SteerBenchmark.Report {
    /// Two bar panels: UDP datagrams/s per policy (relative to the kernel hash) and failed
    /// connections (failed connects + resets) per restart mode.
    public func svg() -> String {
        let width = 760, panelHeight = 260, margin = 50
        var body = ""
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        }
        func panel(top: Int, title: String, bars: [(label: String, value: Double, text: String)], color: String) {
            body += "<text x=\"\(margin)\" y=\"\(top + 20)\" font-size=\"15\" font-weight=\"bold\">\(escape(title))</text>\n"
            let maxValue = max(bars.map(\.value).max() ?? 1, 1e-9)
            let slot = (width - 2 * margin) / max(bars.count, 1)
            let baseY = top + panelHeight - 50
            for (index, bar) in bars.enumerated() {
                let height = Int(Double(panelHeight - 100) * bar.value / maxValue)
                let x = margin + index * slot + slot / 8
                body += "<rect x=\"\(x)\" y=\"\(baseY - height)\" width=\"\(slot * 3 / 4)\" height=\"\(height)\" fill=\"\(color)\"/>\n"
                body += "<text x=\"\(x + slot * 3 / 8)\" y=\"\(baseY - height - 4)\" font-size=\"11\" text-anchor=\"middle\">\(escape(bar.text))</text>\n"
                // "payload:0:8:fallback=kernel" reads as "payload" over "0:8:fallback=kernel".
                let lines = bar.label.split(separator: ":", maxSplits: 1).map(String.init)
                for (number, line) in lines.enumerated() {
                    body += "<text x=\"\(x + slot * 3 / 8)\" y=\"\(baseY + 14 + number * 12)\" font-size=\"\(number == 0 ? 11 : 9)\" text-anchor=\"middle\">\(escape(line))</text>\n"
                }
            }
            body += "<line x1=\"\(margin)\" y1=\"\(baseY)\" x2=\"\(width - margin)\" y2=\"\(baseY)\" stroke=\"#333\"/>\n"
        }
        panel(top: 0, title: "UDP datagrams/s through a 4-socket group (median)",
              bars: udp.map { ($0.policy, $0.datagramsPerSecond, String(format: "%.0fk (%.0f%%)", $0.datagramsPerSecond / 1000, $0.relative * 100)) },
              color: "#1f77b4")
        panel(top: panelHeight, title: "Failed connections across \(restart.first?.restarts ?? 0) restarts under load",
              bars: restart.map { ($0.mode.rawValue, Double($0.failedConnects + $0.resets), "\($0.failedConnects + $0.resets) of \($0.attempted)") },
              color: "#d62728")
        return """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(2 * panelHeight)" font-family="sans-serif">
            <rect width="100%" height="100%" fill="white"/>
            \(body)</svg>
            """
    }
}
