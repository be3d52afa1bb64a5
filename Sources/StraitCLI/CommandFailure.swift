import ArgumentParser
import Foundation

/// A command that could not do its work for a reason outside its command line: an address in use,
/// a cgroup that is not there, a stale pid file. Every Strait command throws this (or a library's
/// typed error, whose description also ends with what to do) for runtime failures, and keeps
/// argument-parser's `ValidationError` for a command line that is wrong in itself.
///
/// ``StraitCommandMain`` prints it as one line, `strait: error: MESSAGE`, without the usage text,
/// and exits 1. A usage error exits 64 (`EX_USAGE`) with the usage.
public struct CommandFailure: Error, CustomStringConvertible {
    /// What failed and what to do about it, in one sentence or two.
    public let message: String

    /// `message` says what failed, then what to do (`"… is not a cgroup v2 directory: create it
    /// with mkdir, or pass another --cgroup"`).
    public init(_ message: String) { self.message = message }

    /// The message as it is printed after `strait: error: `.
    public var description: String { message }
}

/// Parses and runs a Strait root command with one rule for how it ends, shared by `strait` and
/// `strait-bench`:
/// - success, `--help`, `--version`: exit 0;
/// - a bad command line (argument-parser's parse errors, `ValidationError`): exit 64 with the usage;
/// - an explicit `ExitCode`: that code (a command that printed its own report, e.g. `--check`);
/// - any other error (``CommandFailure``, a library's typed error): exit 1 with
///   `NAME: error: DESCRIPTION` on standard error and no usage text.
///
/// `main` is synchronous on purpose, as argument-parser's own `ParsableCommand.main` is: the
/// commands block the main thread (semaphores, `Process.waitUntilExit`). Tried as an `async` main,
/// `strait bench accel` saw its sockperf client run into its timeout and be killed every time, and
/// ran several times slower; synchronous, the same run passes. An asynchronous command needs its
/// own bridge (a semaphore around a `Task`), as `strait proxy` drains today.
public protocol StraitCommandMain: ParsableCommand {}

extension StraitCommandMain {
    /// Parses the process's arguments, runs the command, and exits by the rules above.
    public static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure || code == .success || error is ExitCode || error is CleanExit {
                exit(withError: error)
            }
            let name = configuration.commandName ?? "strait"
            FileHandle.standardError.write(Data("\(name): error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
