import ArgumentParser
import StraitBuildInfo
import StraitCLI

/// The `strait` command. Its `main` comes from ``StraitCommandMain``: usage errors exit 64 with
/// the usage, runtime failures exit 1 with one line.
@main
struct Strait: StraitCommandMain {
    static let configuration = CommandConfiguration(
        commandName: "strait",
        abstract: "Shortens the path data takes between sockets on Linux.",
        version: "strait " + BuildInfo.versionLine,
        subcommands: [DoctorCommand.self, AccelCommand.self, ProxyCommand.self, SteerCommand.self, DropCommand.self, LBCommand.self, LimitCommand.self, BenchCommand.self,
            AgentCommand.self]
    )
}
