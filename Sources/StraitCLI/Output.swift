import ArgumentParser
import Foundation
import Logging

/// Prints a value as pretty, key-sorted JSON, with snake_case keys: what every `--json` prints.
public func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    encoder.dateEncodingStrategy = .iso8601
    // JSON has no infinity or NaN: a ratio without a denominator prints as a string, never aborts the report.
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// A value as one line of compact JSON with sorted keys: what streaming commands print with
/// `--json`, one object a line (`strait accel trace`, `strait steer serve`).
public func jsonLine<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// Renders rows as an aligned text table, the first row being the header.
public func table(_ rows: [[String]]) -> String {
    guard let header = rows.first else { return "" }
    let widths = header.indices.map { column in rows.map { $0.indices.contains(column) ? $0[column].count : 0 }.max() ?? 0 }
    func line(_ row: [String]) -> String {
        row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingTrailingSpaces()
    }
    let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
    return ([line(header), rule] + rows.dropFirst().map(line)).joined(separator: "\n")
}

extension String {
    /// The string without its trailing spaces (a table's last column is not padded).
    public func trimmingTrailingSpaces() -> String {
        var text = Substring(self)
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}

extension ParsableCommand {
    /// Logging to standard error at `level` (a `--log-level` value), for long-running commands.
    public static func bootstrapLogging(level text: String) throws {
        guard let level = Logger.Level(rawValue: text) else { throw ValidationError("--log-level: one of trace, debug, info, notice, warning, error") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }

    /// Sends swift-log to standard error at the level `STRAIT_LOG` names (default `warning`), the
    /// same for every Strait command. Call it once, at the start of `run()`.
    public static func bootstrapLogging() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = ProcessInfo.processInfo.environment["STRAIT_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
            return handler
        }
    }
}

/// Refuses a number of seconds outside `range`, NaN and infinity included (comparisons with NaN
/// are all false, so a plain `guard x > 0` would let it through only to trap in a conversion).
public func requireSeconds(_ value: Double, in range: ClosedRange<Double>, option: String) throws {
    guard value.isFinite, range.contains(value) else {
        throw ValidationError("\(option): a number of seconds from \(String(format: "%g", range.lowerBound)) to \(String(format: "%g", range.upperBound)) (got \(value))")
    }
}
