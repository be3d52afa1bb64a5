import ArgumentParser
import Dispatch
import Foundation
import Logging
import StraitNet
import StraitProxy
import StraitSystem
import Synchronization

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
            strait proxy reload            (SIGHUP to the running proxy: re-read its config file)
            strait proxy restart           (SIGUSR2: a new process takes the listening sockets; none lost)
            SIGTERM or Ctrl-C drains: no new connections, open ones get drain_timeout to finish.
            """,
        subcommands: [ProxyRun.self, ProxyReload.self, ProxyRestart.self],
        defaultSubcommand: ProxyRun.self
    )
}

/// Where a running proxy writes its process id, for `strait proxy reload` and `restart`.
private let defaultPidFile = "/run/strait-proxy.pid"
/// Where a running proxy offers its listening sockets to its successor in a restart.
private let defaultHandOverSocket = "/run/strait-proxy.handover"

struct ProxyRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the proxy (the default).")

    @Option(help: "YAML configuration file (see the README, section strait proxy).") var config: String?
    @Option(help: "Validate this configuration file and exit: prints FILE:LINE:COLUMN: what was expected.") var check: String?
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
    @Option(help: .hidden) var takeOver: String?

    func run() throws {
        if let check {
            do {
                let parsed = try ProxyConfigLoader.load(path: check)
                print("\(check): ok (\(parsed.listeners.count) listener(s), \(parsed.clusters.count) cluster(s))")
                return
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        let loaded = try loadConfig()
        try Strait.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "strait.proxy")
        guard (1...64).contains(threads) else { throw ValidationError("--threads: from 1 to 64") }

        ProxySignals.install()
        // In a restart: the same listening sockets as the previous process, so nothing queued on
        // them is lost; the previous process stops accepting only once this one accepts.
        let receipt = try takeOver.map { path in
            do { return try ListenerHandOver.take(from: path) } catch {
                throw ValidationError("taking the listeners from \(path): \(error)")
            }
        }
        let proxy: Proxy
        do {
            proxy = try Proxy(config: loaded, loopCount: threads, inheriting: receipt.map(Self.inherited) ?? [:], logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        if let receipt {
            try receipt.confirm()
            logger.notice("took over the listening sockets", metadata: ["from": "\(takeOver ?? "")", "sockets": "\(receipt.listenerDescriptors.count)"])
        }
        try? "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { Self.removePidFile(pidFile) }
        let offer = try? ListenerHandOver.Offer(
            path: handoverSocket,
            package: {
                let sockets = proxy.listenerSockets
                return ListenerHandOver.Package(listeners: sockets.map(\.fd), note: sockets.map { "\($0.address)" }.joined(separator: "\n"))
            },
            stopAccepting: {
                proxy.stopAccepting()
                ProxySignals.post(ProxySignals.handedOver)
            })
        if offer == nil { logger.warning("cannot offer listeners at \(handoverSocket): `strait proxy restart` will not work") }
        defer { offer?.close() }
        for (name, address) in proxy.listenerAddresses.sorted(by: { $0.key < $1.key }) {
            logger.notice("listening", metadata: ["listener": "\(name)", "address": "\(address)"])
        }
        if proxy.sockmapUnavailable == nil { logger.notice("sockmap datapath available") }

        var current = loaded
        while true {
            let signal = ProxySignals.next()
            if signal == SIGHUP {
                guard let path = config else {
                    logger.notice("reload asked, but the proxy runs from command-line flags: nothing to re-read")
                    continue
                }
                do {
                    let next = try ProxyConfigLoader.load(path: path)
                    try proxy.reload(next)
                    current = next
                } catch {
                    logger.error("reload rejected, keeping the running configuration: \(error)")
                }
                continue
            }
            if signal == SIGUSR2 {
                startSuccessor(logger: logger)
                continue
            }
            if signal == ProxySignals.handedOver {
                logger.notice("successor accepts on the listening sockets; this process stopped accepting")
            }
            logger.notice("draining", metadata: ["deadline": "\(current.drainTimeout)", "open": "\(proxy.activeConnections)"])
            let done = DispatchSemaphore(value: 0)
            let drainTimeout = current.drainTimeout
            Task {
                await proxy.shutdown(drainTimeout: drainTimeout)
                done.signal()
            }
            done.wait()
            logger.notice("stopped")
            return
        }
    }

    /// Maps the sockets of a hand-over to their addresses (the offer's note lists one per line).
    static func inherited(_ receipt: ListenerHandOver.Receipt) -> [SocketAddress: CInt] {
        let addresses = receipt.note.split(separator: "\n").map { SocketAddress(parsing: String($0)) }
        var sockets: [SocketAddress: CInt] = [:]
        for (address, fd) in zip(addresses, receipt.listenerDescriptors) {
            if let address { sockets[address] = fd } else { closeDescriptor(fd) }
        }
        return sockets
    }

    /// Starts the next proxy process: this binary with the same arguments plus `--take-over`. It
    /// takes the listening sockets from this process's offer; this one then drains and exits.
    private func startSuccessor(logger: Logger) {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if let index = arguments.firstIndex(of: "--take-over") { arguments.removeSubrange(index...min(index + 1, arguments.count - 1)) }
        arguments += ["--take-over", handoverSocket]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        process.arguments = arguments
        do {
            try process.run()
            logger.notice("restart: started the successor", metadata: ["pid": "\(process.processIdentifier)"])
        } catch {
            logger.error("restart: could not start the successor, this process keeps running: \(error)")
        }
    }

    /// Removes the pid file unless a successor has written its own pid there.
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
        abstract: "Tell the running proxy (by its pid file) to re-read its configuration; established connections stay open."
    )

    @Option(help: "The running proxy's pid file.") var pidFile: String = defaultPidFile

    func run() throws {
        let pid = try Self.runningPid(pidFile)
        guard kill(pid, SIGHUP) == 0 else {
            throw ValidationError("cannot signal process \(pid) from \(pidFile): errno \(errno) (stale pid file?)")
        }
        print("reload sent to process \(pid)")
    }

    /// The pid a running proxy wrote to `pidFile`.
    static func runningPid(_ pidFile: String) throws -> pid_t {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else {
            throw ValidationError("no running proxy: \(pidFile) is missing or unreadable (is `strait proxy` running with this --pid-file?)")
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
    @Option(help: "Seconds to wait for the new process.") var timeout: Double = 10

    func run() throws {
        let old = try ProxyReload.runningPid(pidFile)
        guard kill(old, SIGUSR2) == 0 else { throw ValidationError("cannot signal process \(old): errno \(errno)") }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid != old, kill(pid, 0) == 0
            {
                print("restarted: process \(pid) accepts on the listening sockets; process \(old) drains its connections")
                return
            }
            usleep(50_000)
        }
        throw ValidationError("process \(old) got SIGUSR2 but no successor wrote \(pidFile) within \(timeout) s; the old process keeps running (see its log)")
    }
}

/// SIGHUP, SIGINT, SIGTERM and SIGUSR2 turned into values the command waits for.
enum ProxySignals {
    private static let pending = Atomic<Int32>(0)
    /// Not a signal: the successor took the listening sockets.
    static let handedOver: Int32 = -1

    static func post(_ value: Int32) { pending.store(value, ordering: .relaxed) }

    static func install() {
        // A launcher may have left them blocked (a child spawned from a libdispatch thread inherits
        // that thread's full mask): unblock what this process must react to.
        var handled = sigset_t()
        sigemptyset(&handled)
        for number in [SIGHUP, SIGINT, SIGTERM, SIGUSR2] { sigaddset(&handled, number) }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        for number in [SIGHUP, SIGINT, SIGTERM, SIGUSR2] {
            signal(number) { received in ProxySignals.pending.store(received, ordering: .relaxed) }
        }
    }

    /// Waits for the next signal and returns its number.
    static func next() -> Int32 {
        while true {
            let value = pending.exchange(0, ordering: .relaxed)
            if value != 0 { return value }
            usleep(50_000)
        }
    }
}
