import ArgumentParser
import Dispatch
import Foundation
import Logging
import StraitCLI
import StraitLB
import StraitNet
import StraitProxy
import StraitSystem

struct LBCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lb",
        abstract: "Connect-time load balancing for the local clients of one cgroup (cgroup socket programs: no NAT per packet).",
        discussion: """
            strait lb --config lb.yaml       (runs until SIGINT/SIGTERM; re-reads the file when it changes)
            strait lb --check lb.yaml        (validate: FILE:LINE:COLUMN: what was expected)
            strait lb status [--json]        (services, backends, health, connects per backend)
            """,
        subcommands: [LBRun.self, LBStatusCommand.self],
        defaultSubcommand: LBRun.self
    )
}

struct LBRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Balance the configured services (the default).")

    @Option(help: "YAML configuration file (see the README, section strait lb).") var config: String?
    @Option(help: "Validate this configuration file and exit.") var check: String?
    @Option(help: "Serve Prometheus metrics on this host:port (overrides the file's `metrics`).") var metrics: String?
    @Option(help: "Where the state for `strait lb status` is written.") var stateDirectory: String = LBDaemon.defaultStateDirectory
    @Option(help: "Where the counters are pinned in bpffs.") var pinDirectory: String = LBDaemon.defaultPinDirectory
    @Option(help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func run() throws {
        if let check {
            let parsed = try load(check)
            print("\(check): ok (\(parsed.services.count) service(s))")
            return
        }
        guard let path = config else { throw ValidationError("--config FILE is required (or --check FILE)") }
        try Strait.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "strait.lb")
        var loaded = try load(path)
        if let metrics {
            guard let address = SocketAddress(parsing: metrics) else { throw ValidationError("--metrics: expected host:port") }
            loaded.metricsAddress = address
        }
        let interrupt = SignalFlag.interrupt()
        let daemon = try LBDaemon(config: loaded, stateDirectory: stateDirectory, pinDirectory: pinDirectory, logger: logger)
        logger.notice("balancing \(loaded.services.count) service(s) for cgroup \(loaded.cgroup)")
        var modified = Self.modificationDate(path)
        while !interrupt.isRaised {
            usleep(200_000)
            let now = Self.modificationDate(path)
            guard now != modified else { continue }
            modified = now
            do {
                var next = try LBConfigLoader.load(path: path)
                guard next.cgroup == loaded.cgroup else {
                    logger.error("\(path): the cgroup changed; restart strait lb to balance another cgroup (kept the running configuration)")
                    continue
                }
                next.metricsAddress = loaded.metricsAddress
                try daemon.reload(next)
                loaded = next
                logger.notice("reloaded \(path): \(next.services.count) service(s)")
            } catch {
                logger.error("not reloaded, kept the running configuration: \(error)")
            }
        }
        let done = DispatchSemaphore(value: 0)
        Task {
            await daemon.stop()
            done.signal()
        }
        done.wait()
        logger.notice("stopped")
    }

    private func load(_ path: String) throws -> LBConfig {
        do { return try LBConfigLoader.load(path: path) } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    private static func modificationDate(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
}

struct LBStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Services, backends, health and connects per backend of the running strait lb.")

    @Flag(help: "JSON instead of a table.") var json = false
    @Option(help: "The running lb's state directory.") var stateDirectory: String = LBDaemon.defaultStateDirectory
    @Option(help: "The running lb's pin directory.") var pinDirectory: String = LBDaemon.defaultPinDirectory

    func run() throws {
        let snapshot: LBSnapshot
        do { snapshot = try LBStatus.read(stateDirectory: stateDirectory, pinDirectory: pinDirectory) } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
        if json { try printJSON(snapshot) } else { print(LBStatus.render(snapshot)) }
    }
}
