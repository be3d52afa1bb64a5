import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// The agent as a swift-service-lifecycle `Service`: run it in a `ServiceGroup` whose graceful
/// shutdown signals are SIGTERM and SIGINT (``runUntilSignalled(_:watchInterval:logger:)`` does).
///
/// `run()` starts the agent, then reloads on every SIGHUP, and, with a `watchInterval`, when the
/// file's bytes change (a Kubernetes ConfigMap update swaps the mounted file; no signal comes).
/// On graceful shutdown it stops the agent: the proxy drains, the kernel state stays pinned.
public struct AgentService: Service {
    /// The agent this service runs (started by ``run()``).
    public let agent: Agent
    /// How often to compare the file with what was last read; nil: only SIGHUP reloads.
    public let watchInterval: Duration?

    /// Only SIGHUP reloads unless `watchInterval` is given.
    public init(agent: Agent, watchInterval: Duration? = nil) {
        self.agent = agent
        self.watchInterval = watchInterval
    }

    /// Starts the agent (throwing if the file does not check), reloads until graceful shutdown, then stops it.
    public func run() async throws {
        // Trap SIGHUP before READY=1 can make systemd send one (its default action would end the
        // process); one that arrives during the start is queued and reloads right after it.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        try agent.start()
        let agent = self.agent
        let path = agent.options.configPath
        let interval = watchInterval
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in hangups.cancelOnGracefulShutdown() {
                    agent.logger.notice("SIGHUP: reloading \(path)")
                    agent.reload()
                }
            }
            if let interval {
                group.addTask {
                    var seen = FileManager.default.contents(atPath: path)
                    while !Task.isCancelled && !Task.isShuttingDownGracefully {
                        try? await Task.sleep(for: interval)
                        let now = FileManager.default.contents(atPath: path)
                        if now != seen, now != nil {
                            seen = now
                            agent.logger.notice("\(path) changed: reloading")
                            agent.reload()
                        }
                    }
                }
            }
            // The signal loop ends at graceful shutdown; the watcher sees the flag within one interval.
            await group.next()
            group.cancelAll()
        }
        await agent.stop()
    }

    /// Runs the agent until SIGTERM or SIGINT (what `strait agent` does). Throws if it cannot start.
    public static func runUntilSignalled(_ agent: Agent, watchInterval: Duration?, logger: Logger) async throws {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: AgentService(agent: agent, watchInterval: watchInterval))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }
}
