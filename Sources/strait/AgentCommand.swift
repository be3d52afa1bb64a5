import ArgumentParser
import Dispatch
import Foundation
import Logging
import StraitAgent
import StraitSystem

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "The node agent: holds the desired state of one file (accel, drop, proxy, lb) and keeps the kernel at it.",
        discussion: """
            strait agent --config /etc/strait/strait.yaml
                                  reconcile (adopting pins that already match), serve /metrics, /healthz, /readyz
            strait agent --check /etc/strait/strait.yaml
                                  every problem as FILE:LINE:COLUMN: what was expected
            strait agent cleanup  detach and unpin everything the agent made (stop the agent first)
            SIGHUP (systemctl reload) re-reads the file and applies only what differs; a file that does
            not check is rejected whole. SIGTERM stops the agent and leaves the kernel state pinned.
            """,
        subcommands: [AgentRun.self, AgentCleanup.self],
        defaultSubcommand: AgentRun.self
    )

    /// Where the agent's state lives; hidden options so tests use private folders.
    struct Paths: ParsableArguments {
        @Option(help: .hidden) var pinRoot: String = AgentPaths.defaultPinRoot
        @Option(help: "Where the agent records what it made (for cleanup).") var stateFile: String = AgentPaths.defaultStateFile

        var value: AgentPaths { AgentPaths(pinRoot: pinRoot, stateFile: stateFile) }
    }
}

struct AgentRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the agent (the default).")

    @Option(help: "The agent file (see the README, section Node agent).") var config: String = "/etc/strait/strait.yaml"
    @Option(help: "Check this agent file and exit: prints every problem as FILE:LINE:COLUMN.") var check: String?
    @Option(help: "Also reload when the file's content changes, checking every this many seconds (0: only on SIGHUP).")
    var watchInterval: Double = 0
    @Option(help: "Event loop threads of the proxy section.") var threads: Int = 2
    @Option(help: "trace, debug, info, notice, warning, error.") var logLevel: String = "notice"
    @OptionGroup var paths: AgentCommand.Paths

    func run() throws {
        if let check {
            do {
                let parsed = try AgentConfigLoader.load(path: check)
                let parts = [parsed.accel.map { _ in "accel" }, parsed.drop.map { _ in "drop" }, parsed.proxy.map { _ in "proxy" }, parsed.lb.map { _ in "lb" }].compactMap { $0 }
                print("\(check): ok (" + (parts.isEmpty ? "no parts" : parts.joined(separator: ", ")) + "; metrics on \(parsed.metricsAddress))")
                return
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: one of trace, debug, info, notice, warning, error") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads: from 1 to 64") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "strait.agent")
        let version = Strait.configuration.version.isEmpty ? "unknown" : Strait.configuration.version
        let agent = Agent(options: Agent.Options(configPath: config, paths: paths.value, version: version, proxyThreads: threads), logger: logger)
        let watch = watchInterval > 0 ? Duration.milliseconds(Int64(watchInterval * 1000)) : nil
        nonisolated(unsafe) var failure: Error?
        let done = DispatchSemaphore(value: 0)
        Task {
            do { try await AgentService.runUntilSignalled(agent, watchInterval: watch, logger: logger) } catch { failure = error }
            done.signal()
        }
        done.wait()
        if let failure {
            FileHandle.standardError.write(Data("strait agent: \(Self.explain(failure))\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The innermost error the service group wraps, as a line to act on.
    static func explain(_ error: Error) -> String {
        if let rejected = error as? AgentConfigError { return "the file does not check:\n\(rejected)" }
        return "\(error)"
    }
}

struct AgentCleanup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cleanup",
        abstract: "Detach and unpin everything the agent made (accel, drop), as its state file records. Stop the agent first.")

    @OptionGroup var paths: AgentCommand.Paths

    func run() throws {
        Strait.bootstrapLogging()
        let reconciler = KernelReconciler(paths: paths.value)
        let removed = try reconciler.cleanup(state: AgentState.read(paths.stateFile))
        print(removed.isEmpty ? "nothing to remove: the agent made nothing (per \(paths.stateFile))" : "removed " + removed.joined(separator: "; "))
    }
}
