/// Prometheus text exposition (format 0.0.4) of values read at scrape time: kernel counters summed
/// over CPUs, a daemon's state, `/proc/self`. A swift-prometheus `Counter` only adds, so a total the
/// kernel keeps cannot be set into one, and a gauge kept in a registry outlives the series it
/// stood for (a removed backend would be reported for good). These are written fresh at each
/// scrape instead: each family once, with its HELP and TYPE, label values escaped as the format
/// asks, and a series that is gone simply not written.
///
/// The one writer of such text in Strait (accel, drop, the proxy's kernel totals, the lb). A value
/// type; costs the text it builds, no system calls.
public struct PrometheusText: Sendable {
    /// The exposition so far, every line ending in a newline.
    public private(set) var text = ""

    /// An empty exposition.
    public init() {}

    /// A counter family (its name ends in `_total`): one sample per label set.
    public mutating func counter(_ name: String, _ help: String, _ samples: [([(String, String)], UInt64)]) {
        family(name, help, "counter", samples.map { ($0.0, String($0.1)) })
    }

    /// A counter with no labels.
    public mutating func counter(_ name: String, _ help: String, _ value: UInt64) {
        family(name, help, "counter", [([], String(value))])
    }

    /// A counter with no labels whose value is not a whole number (CPU seconds).
    public mutating func counter(_ name: String, _ help: String, seconds: Double) {
        family(name, help, "counter", [([], "\(seconds)")])
    }

    /// A gauge family: one sample per label set.
    public mutating func gauge(_ name: String, _ help: String, _ samples: [([(String, String)], Double)]) {
        family(name, help, "gauge", samples.map { ($0.0, Self.number($0.1)) })
    }

    /// A gauge with no labels.
    public mutating func gauge(_ name: String, _ help: String, _ value: Double) {
        family(name, help, "gauge", [([], Self.number(value))])
    }

    private mutating func family(_ name: String, _ help: String, _ type: String, _ samples: [([(String, String)], String)]) {
        text += "# HELP \(name) \(Self.escape(help, quotes: false))\n# TYPE \(name) \(type)\n"
        for (labels, value) in samples {
            let rendered = labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1, quotes: true))\"" }.joined(separator: ",") + "}"
            text += "\(name)\(rendered) \(value)\n"
        }
    }

    /// Whole numbers without a fraction (`1`, not `1.0`), others as Swift prints them.
    static func number(_ value: Double) -> String {
        value.isFinite && value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : "\(value)"
    }

    /// Text escaped as the format asks: backslash and newline always, the double quote in a label
    /// value (`quotes`), not in HELP text.
    static func escape(_ text: String, quotes: Bool) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\"" where quotes: escaped += "\\\""
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
