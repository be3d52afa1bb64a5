import ArgumentParser
import StraitBuildInfo
import StraitCLI

/// `strait-bench`: the side-by-side measurements, in their own executable so that nothing of them
/// (the drivers, the peers' runners, the malloc interposer the allocation counts preload) is in the
/// `strait` an operator installs. `strait bench …` runs this binary when it sits beside `strait`
/// or on PATH; it runs `strait` (for `steer serve`) and the bench servers from its own folder.
@main
struct StraitBenchCommand: StraitCommandMain {
    static let configuration = CommandConfiguration(
        commandName: "strait-bench",
        abstract: "Measure Strait side by side with its peers, in one run, on this machine (also run as `strait bench`).",
        version: "strait-bench " + BuildInfo.versionLine,
        subcommands: [BenchAccel.self, BenchNet.self, BenchProxy.self, BenchSteer.self, BenchDrop.self, BenchLimit.self, BenchSoak.self, BenchLB.self, BenchLBClient.self]
    )
}
