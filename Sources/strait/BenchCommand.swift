import ArgumentParser
import Foundation
import StraitCLI
import StraitSystem

/// `strait bench …` runs `strait-bench …`, the way `git foo` runs `git-foo`: the benchmarks are a
/// separate executable, so that nothing of them is linked into the `strait` an operator installs.
/// It looks beside this binary first (a build's products folder), then on PATH, and replaces this
/// process with it (`execv`), so signals and the exit status are the benchmark's own.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Strait side by side with its peers on this machine (runs strait-bench, built apart: see `strait bench --help`).",
        discussion: """
            The benchmarks are not part of an installed strait. Build them in a checkout with
            `swift build -c release --product strait-bench` (or `make demo`), then run
            `.build/release/strait bench accel` or `.build/release/strait-bench accel`.
            """
    )

    @Argument(parsing: .captureForPassthrough, help: "The benchmark and its options (accel, net, proxy, steer, drop; `strait bench accel --help`).")
    var arguments: [String] = []

    func run() throws {
        guard let path = Executable.sibling("strait-bench") else {
            throw CommandFailure("benchmarks are not installed (no strait-bench beside \(Executable.current) or on PATH): build them in a checkout with `swift build -c release --product strait-bench`")
        }
        // The benchmark and its peers get the signals this process was started with, none blocked.
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        pthread_sigmask(SIG_SETMASK, &unblocked, nil)
        do {
            try ProcessCall.execute(path, arguments: [path] + arguments)
        } catch {
            throw CommandFailure("cannot run \(path): \(error.errno) (errno \(error.errno.rawValue))")
        }
    }
}
