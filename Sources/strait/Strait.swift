import ArgumentParser
import Foundation
import Logging

@main
struct Strait: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strait",
        abstract: "Shortens the path data takes between sockets on Linux.",
        subcommands: [DoctorCommand.self, AccelCommand.self, ProxyCommand.self, SteerCommand.self, DropCommand.self, LBCommand.self, BenchCommand.self]
    )

    /// Logging to standard error at `level` (a `--log-level` value), for long-running commands.
    static func bootstrapLogging(level text: String) throws {
        guard let level = Logger.Level(rawValue: text) else { throw ValidationError("--log-level: one of trace, debug, info, notice, warning, error") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }

    static func bootstrapLogging() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = ProcessInfo.processInfo.environment["STRAIT_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
            return handler
        }
    }
}

/// Prints a value as pretty, key-sorted JSON, with snake_case keys.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Renders rows as an aligned text table, the first row being the header.
func table(_ rows: [[String]]) -> String {
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
    func trimmingTrailingSpaces() -> String {
        var text = Substring(self)
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
