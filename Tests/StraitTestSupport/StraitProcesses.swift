import Foundation
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The `strait` executable of this build and the processes tests start from it.
public enum StraitProcesses {
    /// The `strait` executable beside this test bundle (`swift build --build-tests` builds it).
    public static var executable: String? { BuiltProducts.executable("strait") }

    /// Runs `arguments` (an executable path first) to completion, at most `timeout` seconds
    /// (then SIGKILL); returns the exit status and what it wrote to stdout and stderr.
    public static func run(_ arguments: [String], timeout: Double = 30) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning { try? ProcessCall.signal(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (process.terminationStatus, text)
    }

    /// Whether process `pid` has exited (gone, or a zombie nobody has reaped yet).
    public static func hasExited(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
    }

    /// Waits up to `seconds` for `pid` to exit; returns whether it did.
    public static func waitForExit(_ pid: pid_t, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !hasExited(pid) && Date() < deadline { usleep(10_000) }
        return hasExited(pid)
    }
}
