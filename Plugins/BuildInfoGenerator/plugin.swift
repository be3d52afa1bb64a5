import Foundation
import PackagePlugin

/// Writes the commit the build comes from into the `StraitBuildInfo` target (`BuildInfo.commit`),
/// for `strait --version` and the agent's `strait_build_info`. It asks git for HEAD at every build
/// (a few milliseconds); outside a git checkout, or without git, the commit is `unknown`. A plain
/// `swift build` gets it too: nothing is passed in from the Makefile.
@main
struct BuildInfoGenerator: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "BuildInfo+Commit.swift")
        let commit = Self.headCommit(of: context.package.directoryURL) ?? "unknown"
        return [
            .buildCommand(
                displayName: "Recording build commit \(commit)",
                executable: try context.tool(named: "StraitCodegen").url,
                // The commit is an argument: a new HEAD changes the command, so it runs again.
                arguments: ["build-info", commit, output.path()],
                outputFiles: [output]
            )
        ]
    }

    /// `git rev-parse --short=7 HEAD` in the package folder, or nil when that fails.
    static func headCommit(of directory: URL) -> String? {
        let git = Process()
        git.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        git.arguments = ["git", "-C", directory.path(), "rev-parse", "--short=7", "HEAD"]
        let pipe = Pipe()
        git.standardOutput = pipe
        git.standardError = FileHandle.nullDevice
        guard (try? git.run()) != nil else { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        git.waitUntilExit()
        let commit = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return git.terminationStatus == 0 && !commit.isEmpty ? commit : nil
    }
}
