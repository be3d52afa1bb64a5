import Foundation

/// Finding Strait's own executables and the tools it runs, the way git finds `git-SUBCOMMAND`:
/// first in the folder of the running binary (an install prefix, or the build's products folder),
/// then on `PATH`.
public enum Executable {
    /// The running binary's path, from `/proc/self/exe` (symbolic links resolved), or `argv[0]`
    /// when /proc is not mounted.
    public static var current: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// `name` beside the running binary, else on `PATH`; nil when it is in neither.
    public static func sibling(_ name: String) -> String? {
        let beside = URL(fileURLWithPath: current).deletingLastPathComponent().appending(path: name).path
        return FileManager.default.isExecutableFile(atPath: beside) ? beside : onPath(name)
    }

    /// `name` in a folder of `PATH` (with /usr/sbin and /sbin, which root's tools are in even when
    /// PATH leaves them out); nil when absent. A name with a `/` is returned as it is.
    public static func onPath(_ name: String) -> String? {
        if name.contains("/") { return name }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        let folders = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        return folders.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// A tool Strait ran (`ip`, `tc`, a benchmark peer) that exited non-zero, or could not be found
/// (status 127): the command line, its exit status and what it printed, which usually says what to do.
public struct ToolFailure: Error, CustomStringConvertible {
    /// The command line as run: the tool, then its arguments.
    public let command: [String]
    /// The exit status (127: not installed).
    public let status: Int32
    /// What the tool printed (standard output and error), trimmed.
    public let output: String

    /// A failure of `command` (tool first) with its exit status and output.
    public init(command: [String], status: Int32, output: String) {
        self.command = command
        self.status = status
        self.output = output
    }

    /// The command, its exit status and the last 800 characters of its output.
    public var description: String {
        "`\(command.joined(separator: " "))` exited with \(status): \(output.suffix(800))"
    }
}
