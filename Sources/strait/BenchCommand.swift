import ArgumentParser

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Strait side by side with its peers, in one run, on this machine.",
        subcommands: []
    )
}
