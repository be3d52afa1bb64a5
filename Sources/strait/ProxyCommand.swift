import ArgumentParser
import Dispatch
import Foundation
import Logging
import StraitCLI
import StraitNet
import StraitProxy
import StraitSystem

struct ProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "An L4 TCP proxy whose forwarding can run inside the kernel (sockmap, skmsg), or in userspace (splice, copy).",
        discussion: """
            strait proxy --config strait.yaml
            strait proxy --listen 127.0.0.1:6000 --upstream 127.0.0.1:5201,127.0.0.1:5202 --datapath auto
            strait proxy --listen 127.0.0.1:6000 --upstream 127.0.0.1:5201 --endpoints-cgroup /sys/fs/cgroup/unified/apps
                                           (local clients and servers in that cgroup: their sends skip the proxy)
            strait proxy --check strait.yaml
            strait proxy reload            (re-read the config file; waits for the verdict, exit 1 with the file's errors)
            strait proxy status [--json]   (listeners, clusters, upstream states, the loaded config)
            strait proxy drain 127.0.0.1:5201 [--undo]   (no new connections to it; open ones finish)
            strait proxy restart           (SIGUSR2: a new process takes the listening sockets; none lost)
            SIGTERM or Ctrl-C drains: no new connections, open ones get drain_timeout to finish.
            """,
        subcommands: [ProxyRun.self, ProxyReload.self, ProxyRestart.self, ProxyStatusCommand.self, ProxyDrain.self],
        defaultSubcommand: ProxyRun.self
    )
}

/// Where a running proxy writes its process id, for `strait proxy reload` and `restart`.
private let defaultPidFile = "/run/strait-proxy.pid"
/// Where a running proxy offers its listening sockets to its successor in a restart.
private let defaultHandOverSocket = "/run/strait-proxy.handover"

/// The control socket beside a hand-over socket (`/run/strait-proxy.handover` →
/// `/run/strait-proxy.control`), unless `--control-socket` names one.
func controlSocketPath(_ explicit: String?, handOver: String) -> String {
    if let explicit { return explicit }
    return handOver.hasSuffix(".handover") ? String(handOver.dropLast(".handover".count)) + ".control" : handOver + ".control"
}

struct ProxyRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the proxy (the default).")

    @Option(help: "YAML configuration file (see the README, section strait proxy).") var config: String?
    @Option(help: "Validate this configuration file and exit: prints every mistake as FILE:LINE:COLUMN: what was expected.") var check: String?
    @Flag(help: "With --check: print the outcome as JSON (ok, counts and fingerprint, or every error as a string).") var json = false
    @Option(help: "Quick start: the address to listen on, host:port.") var listen: String?
    @Option(help: "Quick start: upstream addresses, comma-separated host:port.") var upstream: String?
    @Option(help: "Quick start: auto, skmsg, sockmap, splice or copy.") var datapath: String = "auto"
    @Option(help: "Quick start: the cgroup v2 directory of local clients and servers whose sockets may use the skmsg datapath.") var endpointsCgroup: String?
    @Option(help: "Quick start: serve Prometheus metrics on this host:port.") var metrics: String?
    @Option(help: "Event loop threads.") var threads: Int = 2
    @Option(help: "Write the process id here, for `strait proxy reload`.") var pidFile: String = defaultPidFile
    @Option(help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"
    @Option(help: "Unix socket where this proxy offers its listening sockets to its successor (`strait proxy restart`).")
    var handoverSocket: String = defaultHandOverSocket
    @Option(help: "Unix socket answering `strait proxy reload`, `status` and `drain` (default: beside --handover-socket, /run/strait-proxy.control).")
    var controlSocket: String?
    @Option(help: .hidden) var takeOver: String?

    func validate() throws {
        guard (1...64).contains(threads) else { throw ValidationError("--threads: from 1 to 64 (got \(threads))") }
    }

    func run() throws {
        if let check {
            struct Outcome: Encodable {
                var file: String
                var ok: Bool
                var listeners: Int?
                var clusters: Int?
                var fingerprint: String?
                var errors: [String]?
            }
            let parsed: ProxyConfig
            do { parsed = try ProxyConfigLoader.check(path: check) } catch {
                if json {
                    try printJSON(Outcome(file: check, ok: false, errors: error.errors.map(\.description)))
                } else {
                    FileHandle.standardError.write(Data("\(error)\n\(error.errors.count) error(s)\n".utf8))
                }
                throw ExitCode(1)
            }
            if json { return try printJSON(Outcome(file: check, ok: true, listeners: parsed.listeners.count, clusters: parsed.clusters.count, fingerprint: parsed.fingerprint)) }
            print("\(check): ok (\(parsed.listeners.count) listener(s), \(parsed.clusters.count) cluster(s), fingerprint \(parsed.fingerprint))")
            return
        }
        let loaded = try loadConfig()
        try Strait.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "strait.proxy")
        // Two descriptors per connection: the soft default (often 1024) would cap a proxy at ~500.
        do {
            let limits = try ResourceLimits.raiseOpenFilesToHard()
            logger.debug("RLIMIT_NOFILE \(limits.before.soft) -> \(limits.after.soft)")
        } catch {
            logger.warning("cannot raise RLIMIT_NOFILE to its hard limit: \(error)")
        }

        try ProxySignals.install()
        // A second proxy on a live hand-over socket is refused before it binds anything.
        if takeOver == nil, let other = try ListenerHandOver.owner(of: handoverSocket) {
            throw CommandFailure("process \(other) already runs a proxy offering at \(handoverSocket): give this one its own --handover-socket (and --pid-file), or use `strait proxy restart`")
        }
        let controlPath = controlSocketPath(controlSocket, handOver: handoverSocket)
        if takeOver == nil, ControlSocket.isLive(controlPath) {
            throw CommandFailure("another proxy answers on the control socket \(controlPath): give this one its own --control-socket, or use `strait proxy restart`")
        }
        // In a restart: the same listening sockets as the previous process (the metrics listener,
        // the control socket and the hand-over socket too), so nothing queued on them is lost; the previous process
        // stops accepting only once this one accepts.
        let receipt = try takeOver.map { path in
            do { return try ListenerHandOver.take(from: path) } catch {
                throw CommandFailure("taking the listeners from \(path): \(error). Is the previous proxy still running with --handover-socket \(path)?")
            }
        }
        let proxy: Proxy
        var inheritedControl: OwnedDescriptor? = nil
        do {
            var inherited = InheritedSockets()
            if let receipt { inherited = InheritedSockets(note: receipt.note, descriptors: receipt.takeListeners()) }
            inheritedControl = inherited.takeControl(at: controlPath)
            proxy = try Proxy(config: loaded, loopCount: threads, inheriting: inherited, logger: logger)
        } catch {
            throw CommandFailure("\(error)")
        }
        if let receipt {
            try receipt.confirm()
            logger.notice("took over the listening sockets", metadata: ["from": "\(takeOver ?? "")", "sockets": "\(receipt.listenerDescriptors.count)"])
        }
        // After a take-over is confirmed the predecessor no longer accepts on the control socket
        // it handed over: connections queued there meanwhile wait for this process to answer.
        let controller = ProxyController(proxy: proxy, config: loaded, configPath: config)
        let control: ControlSocket
        do {
            if let inherited = inheritedControl.take() {
                control = try ControlSocket(adopting: inherited, path: controlPath, controller: controller)
            } else {
                control = try ControlSocket(path: controlPath, controller: controller)
            }
        } catch {
            Self.stop(proxy, drainTimeout: .zero)
            throw CommandFailure("cannot listen on the control socket \(controlPath) (\(error)): give --control-socket a path this user may create")
        }
        defer { ProxyController.runBlocking { await control.close() } }
        // The offer exists before the pid file names this process: `strait proxy restart` returns
        // once it does, and the next restart may start at once. Every listening socket travels:
        // the listeners, the metrics endpoint's and the control socket's.
        let offer: ListenerHandOver.Offer
        do {
            offer = try ListenerHandOver.Offer(
                path: handoverSocket, continuing: receipt,
                package: {
                    let listeners = proxy.listenerSockets, metrics = proxy.metricsSocket
                    return ListenerHandOver.Package(
                        listeners: listeners.map(\.fd) + (metrics.map { [$0.fd] } ?? []) + [control.listeningDescriptor],
                        note: InheritedSockets.handOverNote(listeners: listeners.map(\.address), metrics: metrics?.address, control: control.path))
                },
                stopAccepting: {
                    proxy.stopAccepting()
                    control.stopAccepting()
                    SignalQueue.post(ProxySignals.handedOver)
                },
                takerFailed: { error in logger.error("restart failed, this process goes on serving: \(error)") })
        } catch {
            Self.stop(proxy, drainTimeout: .zero)
            throw CommandFailure("cannot offer the listening sockets at \(handoverSocket) (\(error)): give --handover-socket a path this user may create")
        }
        defer { offer.close() }
        controller.startRefreshingNames()
        try? "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        // After a hand-over the pid file is the successor's: it writes it the moment it hears
        // `stopping`, possibly while this process reads it on the way out, so this one never
        // touches it then (reading "mine" and removing after the successor's rename lost the file).
        defer { if !offer.handedOver { Self.removePidFile(pidFile) } }
        for (name, address) in proxy.listenerAddresses.sorted(by: { $0.key < $1.key }) {
            logger.notice("listening", metadata: ["listener": "\(name)", "address": "\(address)"])
        }
        if proxy.sockmapUnavailable == nil { logger.notice("sockmap datapath available") }
        // systemd (Type=notify): started once every listener accepts. A successor also names itself
        // the main process, so systemd follows it (the unit needs NotifyAccess=all).
        let notifier = ServiceNotifier()
        let listening = "accepting on \(proxy.listenerAddresses.count) listener(s)"
        if receipt != nil {
            try? notifier.send(.mainProcess(getpid()), .ready, .status(listening + " (took over from the previous process)"))
        } else {
            try? notifier.send(.ready, .status(listening))
        }

        var successor: pid_t?
        while true {
            guard let signal = try SignalQueue.next() else { continue }
            if signal == SIGHUP {
                // systemd's ExecReload; `strait proxy reload` goes through the control socket to the same call.
                try? notifier.send(.reloading)
                let verdict = controller.reload()
                if verdict.applied {
                    try? notifier.send(.ready, .status("configuration reloaded; accepting on \(proxy.listenerAddresses.count) listener(s)"))
                } else {
                    try? notifier.send(.ready, .status("reload rejected, running the previous configuration: \(verdict.errors.first ?? "")"))
                }
                continue
            }
            if signal == SIGUSR2 {
                successor = startSuccessor(logger: logger, offer: offer) ?? successor
                continue
            }
            if signal == CInt(ProxySignals.handedOver) {
                logger.notice("successor accepts on the listening sockets; this process stopped accepting")
                // systemd follows the successor from here; no STOPPING=1, which would stop the unit.
                if let successor { try? notifier.send(.mainProcess(successor), .status("handed the listening sockets to process \(successor); draining")) }
            } else {
                try? notifier.send(.stopping, .status("draining \(proxy.activeConnections) connection(s)"))
            }
            controller.stopRefreshingNames()
            let drainTimeout = controller.config.drainTimeout
            logger.notice("draining", metadata: ["deadline": "\(drainTimeout)", "open": "\(proxy.activeConnections)"])
            Self.stop(proxy, drainTimeout: drainTimeout)
            logger.notice("stopped")
            return
        }
    }

    /// Drains and stops `proxy` from the main thread (never a concurrency thread, which the drain needs).
    static func stop(_ proxy: Proxy, drainTimeout: Duration) {
        ProxyController.runBlocking { await proxy.shutdown(drainTimeout: drainTimeout) }
    }

    /// Starts the next proxy process: this binary with the same arguments plus `--take-over`. It
    /// takes the listening sockets from this process's offer; this one then drains and exits.
    /// Returns the successor's process id, or nil when it could not be started.
    private func startSuccessor(logger: Logger, offer: ListenerHandOver.Offer) -> pid_t? {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if let index = arguments.firstIndex(of: "--take-over") { arguments.removeSubrange(index...min(index + 1, arguments.count - 1)) }
        arguments += ["--take-over", handoverSocket]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        process.arguments = arguments
        process.terminationHandler = { ended in
            guard !offer.handedOver else { return }  // a successor that took over, exiting later on its own
            // The waiting `strait proxy restart` reads this from the offer and reports it at once.
            offer.recordFailedSuccessor("the successor (process \(ended.processIdentifier)) exited with status \(ended.terminationStatus) before taking over")
            logger.error("restart: the successor (process \(ended.processIdentifier)) exited with status \(ended.terminationStatus); this process goes on serving")
        }
        do {
            try process.run()
            logger.notice("restart: started the successor", metadata: ["pid": "\(process.processIdentifier)"])
            return process.processIdentifier
        } catch {
            offer.recordFailedSuccessor("could not start the successor: \(error)")
            logger.error("restart: could not start the successor, this process keeps running: \(error)")
            return nil
        }
    }

    /// Removes the pid file unless another process has written its own pid there. Only for a
    /// proxy that stops without a successor (a successor may rewrite the file at any moment).
    static func removePidFile(_ path: String) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) == getpid() else { return }
        try? FileManager.default.removeItem(atPath: path)
    }

    private func loadConfig() throws -> ProxyConfig {
        if let config {
            guard listen == nil && upstream == nil else { throw ValidationError("use either --config or --listen/--upstream, not both") }
            do { return try ProxyConfigLoader.load(path: config) } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        guard let listen, let upstream else {
            throw ValidationError("give --config FILE, or --listen HOST:PORT with --upstream HOST:PORT[,...]")
        }
        guard let listenAddress = SocketAddress(parsing: listen) else { throw ValidationError("--listen: expected host:port, got \(listen)") }
        var upstreams: [SocketAddress] = []
        for item in upstream.split(separator: ",") {
            guard let address = SocketAddress(parsing: String(item)) else { throw ValidationError("--upstream: expected host:port, got \(item)") }
            upstreams.append(address)
        }
        guard let path = Datapath(rawValue: datapath) else {
            throw ValidationError("--datapath: one of \(Datapath.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var quick = ProxyConfig.quickStart(listen: listenAddress, upstreams: upstreams, datapath: path)
        quick.endpointsCgroup = endpointsCgroup
        if let metrics {
            guard let address = SocketAddress(parsing: metrics) else { throw ValidationError("--metrics: expected host:port") }
            quick.metricsAddress = address
        }
        return quick
    }
}

struct ProxyReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make the running proxy re-read its configuration and wait for its verdict: exit 1 with every error of a rejected file (the running configuration stays). Established connections stay open.",
        discussion: "SIGHUP (systemd's ExecReload) reloads the same way; the verdict is then in the log and in `strait proxy status`."
    )

    @Option(help: "The running proxy's pid file.") var pidFile: String = defaultPidFile
    @Option(help: "The running proxy's --handover-socket: it confirms which process the proxy is before anything is asked.")
    var handoverSocket: String = defaultHandOverSocket
    @Option(help: "The running proxy's --control-socket (default: beside --handover-socket).") var controlSocket: String?
    @Flag(help: "Print the verdict as JSON.") var json = false

    func run() throws {
        let pid = try Self.verifiedPid(pidFile, handoverSocket: handoverSocket)
        let answer: Data
        do { answer = try ControlSocket.send("reload", to: controlSocketPath(controlSocket, handOver: handoverSocket)) } catch {
            throw CommandFailure("\(error)")
        }
        guard let verdict = try? JSONDecoder().decode(ReloadVerdict.self, from: answer) else {
            throw CommandFailure("process \(pid) answered something that is not a reload verdict: \(String(decoding: answer.prefix(200), as: UTF8.self))")
        }
        if json {
            FileHandle.standardOutput.write(answer)
        } else if verdict.applied {
            print("reloaded: process \(pid) runs configuration \(verdict.configFingerprint)")
            for note in verdict.notes { print("  \(note)") }
        } else {
            FileHandle.standardError.write(Data("reload rejected; process \(pid) keeps running configuration \(verdict.configFingerprint):\n".utf8))
            for error in verdict.errors { FileHandle.standardError.write(Data("\(error)\n".utf8)) }
        }
        if !verdict.applied { throw ExitCode(1) }
    }

    /// What `restart` did, for `--json`.
    struct Signalled: Encodable {
        var signal: String
        var pid: pid_t
        var successor: pid_t?
    }

    /// The pid a running proxy wrote to `pidFile`.
    static func runningPid(_ pidFile: String) throws -> pid_t {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else {
            throw CommandFailure("no running proxy: \(pidFile) is missing or unreadable. Is `strait proxy` running with this --pid-file?")
        }
        return pid
    }

    /// The pid in `pidFile`, once the proxy offering at `handoverSocket` has confirmed it is that
    /// process: a stale pid file (its process gone, the pid reused by anything else) is refused
    /// and nothing is signalled.
    static func verifiedPid(_ pidFile: String, handoverSocket: String) throws -> pid_t {
        let pid = try runningPid(pidFile)
        let owner: pid_t?
        do {
            owner = try ListenerHandOver.owner(of: handoverSocket, timeout: .seconds(5))
        } catch {
            throw CommandFailure("cannot ask \(handoverSocket) which process is the proxy (\(error)); not signalling process \(pid)")
        }
        guard let owner else {
            throw CommandFailure("no proxy offers at \(handoverSocket), so process \(pid) named by \(pidFile) is not a running Strait proxy (stale pid file?); not signalling it. Give --handover-socket if the proxy runs with another")
        }
        guard owner == pid else {
            throw CommandFailure("\(pidFile) names process \(pid), but the proxy offering at \(handoverSocket) is process \(owner) (stale pid file?); not signalling \(pid)")
        }
        return pid
    }
}

struct ProxyRestart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restart",
        abstract: "Restart the running proxy in place: a new process takes its listening sockets, the old one drains. No connection is refused or reset."
    )

    @Option(help: "The running proxy's pid file.") var pidFile: String = defaultPidFile
    @Option(help: "The running proxy's --handover-socket: it confirms which process the proxy is before any signal.")
    var handoverSocket: String = defaultHandOverSocket
    @Option(help: "Seconds to wait for the new process.") var timeout: Double = 10
    @Flag(help: "Print JSON: the old process and its successor.") var json = false

    /// Returns once the successor is fully in place: it accepts on every listening socket, the old
    /// process has stopped accepting, and the successor answers on the hand-over socket (so the
    /// next restart may start at once).
    func validate() throws { try requireSeconds(timeout, in: 0.1...3600, option: "--timeout") }

    func run() throws {
        let old = try ProxyReload.verifiedPid(pidFile, handoverSocket: handoverSocket)
        let failedBefore = (try? ListenerHandOver.status(of: handoverSocket))?.failedSuccessors ?? 0
        do { try ProcessCall.signal(old, SIGUSR2) } catch {
            throw CommandFailure("cannot signal process \(old) (from \(pidFile)): \(error.errno). The pid file is stale: is the proxy running?")
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let status = try? ListenerHandOver.status(of: handoverSocket)
            if let pid = try? ProxyReload.runningPid(pidFile), pid != old, status?.pid == pid {
                if json { return try printJSON(ProxyReload.Signalled(signal: "SIGUSR2", pid: old, successor: pid)) }
                print("restarted: process \(pid) accepts on the listening sockets; process \(old) drains its connections")
                return
            }
            // The old process saw its successor exit (it waits for it): no need to wait for the timeout.
            if let status, status.pid == old, status.failedSuccessors > failedBefore {
                throw CommandFailure("restart failed: \(status.lastFailure); process \(old) keeps serving (see its log for why)")
            }
            // An old process with nothing to drain may exit before its successor writes the pid file;
            // only when nobody holds the hand-over socket any more has the restart failed for good.
            if !ProcessCall.isAlive(old), case .success(nil) = Result(catching: { try ListenerHandOver.owner(of: handoverSocket) }) {
                throw CommandFailure("process \(old) exited and no successor took over; see its log")
            }
            usleep(20_000)
        }
        throw CommandFailure("process \(old) got SIGUSR2 but no successor took over within \(timeout) s; the old process keeps serving (see its log for why)")
    }
}

struct ProxyStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "What the running proxy does now: listeners, clusters, each upstream's state and connections, the loaded configuration and the last reload."
    )

    @Option(help: "The running proxy's --handover-socket (the control socket is beside it).") var handoverSocket: String = defaultHandOverSocket
    @Option(help: "The running proxy's --control-socket.") var controlSocket: String?
    @Flag(help: "Print the status as JSON (what GET /status serves).") var json = false

    func run() throws {
        guard let status = try askControlSocket("status", at: controlSocketPath(controlSocket, handOver: handoverSocket), as: ProxyStatus.self, printingJSON: json) else { return }
        print(Self.render(status))
    }

    /// The status as an operator reads it.
    static func render(_ status: ProxyStatus) -> String {
        var lines = ["process \(status.pid), strait \(status.version), \(status.ready ? "ready" : "NOT READY (draining or not listening)")"]
        let loaded = Date(timeIntervalSince1970: status.configLoadedAt)
        lines.append("configuration \(status.configFingerprint), applied \(loaded.formatted(.iso8601))")
        if let reload = status.lastReload {
            let at = Date(timeIntervalSince1970: reload.at).formatted(.iso8601)
            lines.append("last reload \(at): " + (reload.applied ? "applied" : "rejected: " + reload.errors.joined(separator: "; ")))
        }
        if let metrics = status.metrics { lines.append("metrics http://\(metrics)/metrics (also /status, /healthz, /readyz)") }
        if let reason = status.sockmapUnavailable { lines.append("kernel datapath off: \(reason)") }
        if let budget = status.descriptors {
            lines.append("descriptors: \(budget.held) of \(budget.capacity) held by relays, \(budget.reserve) in reserve under RLIMIT_NOFILE\(budget.full ? "  FULL (clients queue)" : "")")
        }
        lines.append("listeners:")
        for listener in status.listeners {
            let limit = listener.atLimit ? "  AT LIMIT (\(listener.maxConnections), clients queue)" : ""
            lines.append("  \(listener.name)  \(listener.address) → \(listener.cluster)  \(listener.datapath)  \(listener.active) active\(listener.acceptProxy.map { "  accept_proxy \($0)" } ?? "")\(limit)")
        }
        lines.append("clusters:")
        for cluster in status.clusters {
            lines.append("  \(cluster.name)  \(cluster.balance)\(cluster.retries > 0 ? ", \(cluster.retries) retries" : "")")
            for upstream in cluster.upstreams {
                let extras = (upstream.backup ? ["backup"] : []) + (upstream.weight != 1 ? ["weight \(upstream.weight)"] : []) + (upstream.ejections > 0 ? ["\(upstream.ejections) ejections"] : [])
                lines.append("    \(upstream.address)\(upstream.hostname.map { " (\($0))" } ?? "")  \(upstream.state)  \(upstream.active) active\(extras.isEmpty ? "" : "  (" + extras.joined(separator: ", ") + ")")")
                if let mix = datapathMix(upstream) { lines.append("      \(mix)") }
            }
        }
        return lines.joined(separator: "\n")
    }

    /// `copy 1/10  sockmap 2/4  (3 auto switches)`: active/total per datapath used so far, or nil
    /// when none was.
    static func datapathMix(_ upstream: ProxyStatus.Upstream) -> String? {
        guard !upstream.datapaths.isEmpty else { return nil }
        let shares = upstream.datapaths.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.active)/\($0.value.total)" }
        let switches = upstream.datapathSwitches > 0 ? "  (\(upstream.datapathSwitches) auto switches)" : ""
        return "datapaths (active/total): " + shares.joined(separator: "  ") + switches
    }
}

struct ProxyDrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Stop sending new connections to one upstream (in every cluster listing it); its open connections finish. --undo sends them again."
    )

    @Argument(help: "The upstream, host:port as in the configuration.") var upstream: String
    @Flag(help: "Take the upstream back (undrain).") var undo = false
    @Option(help: "The running proxy's --handover-socket (the control socket is beside it).") var handoverSocket: String = defaultHandOverSocket
    @Option(help: "The running proxy's --control-socket.") var controlSocket: String?
    @Flag(help: "Print the outcome as JSON.") var json = false

    func run() throws {
        guard !upstream.contains(where: { $0 == " " || $0 == "\n" }) else { throw ValidationError("UPSTREAM: host:port, without spaces") }
        let command = "\(undo ? "undrain" : "drain") \(upstream)"
        guard let outcome = try askControlSocket(command, at: controlSocketPath(controlSocket, handOver: handoverSocket), as: DrainOutcome.self, printingJSON: json) else { return }
        print("\(outcome.upstream) \(outcome.draining ? "draining: no new connections" : "takes new connections again") (clusters \(outcome.clusters.joined(separator: ", ")); \(outcome.active) open)")
    }
}

/// Sends `command` to the control socket at `path`: with `printingJSON` prints the answer as it
/// came and returns nil, else returns it decoded. A failure (no proxy there, a refused command)
/// is a ``CommandFailure`` with the proxy's sentence.
func askControlSocket<Answer: Decodable>(_ command: String, at path: String, as type: Answer.Type, printingJSON: Bool) throws -> Answer? {
    let answer: Data
    do { answer = try ControlSocket.send(command, to: path, timeout: .seconds(10)) } catch { throw CommandFailure("\(error)") }
    if printingJSON {
        FileHandle.standardOutput.write(answer)
        return nil
    }
    guard let decoded = try? JSONDecoder().decode(Answer.self, from: answer) else {
        throw CommandFailure("the control socket at \(path) answered something unexpected for `\(command)`: \(String(decoding: answer.prefix(200), as: UTF8.self))")
    }
    return decoded
}

/// The signals the proxy handles, and its one posted event, read from ``SignalQueue`` in order.
enum ProxySignals {
    /// Not a signal: the successor took the listening sockets.
    static let handedOver: UInt8 = 200

    static func install() throws(SystemCallError) {
        try SignalQueue.install([SIGHUP, SIGINT, SIGTERM, SIGUSR2])
    }
}
