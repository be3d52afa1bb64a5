import ArgumentParser
import Dispatch
import Foundation
import Logging
import StraitNet
import StraitProxy
import Synchronization

struct ProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "An L4 TCP proxy whose forwarding can run inside the kernel (sockmap), or in userspace (splice, copy).",
        discussion: """
            strait proxy --config strait.yaml
            strait proxy --listen 127.0.0.1:6000 --upstream 127.0.0.1:5201,127.0.0.1:5202 --datapath auto
            strait proxy --check strait.yaml
            strait proxy reload            (SIGHUP to the running proxy: re-read its config file)
            SIGTERM or Ctrl-C drains: no new connections, open ones get drain_timeout to finish.
            """,
        subcommands: [ProxyRun.self, ProxyReload.self],
        defaultSubcommand: ProxyRun.self
    )
}

/// Where a running proxy writes its process id, for `strait proxy reload`.
private let defaultPidFile = "/run/strait-proxy.pid"

struct ProxyRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the proxy (the default).")

    @Option(help: "YAML configuration file (see docs/proxy.md).") var config: String?
    @Option(help: "Validate this configuration file and exit: prints FILE:LINE:COLUMN: what was expected.") var check: String?
    @Option(help: "Quick start: the address to listen on, host:port.") var listen: String?
    @Option(help: "Quick start: upstream addresses, comma-separated host:port.") var upstream: String?
    @Option(help: "Quick start: auto, sockmap, splice or copy.") var datapath: String = "auto"
    @Option(help: "Quick start: serve Prometheus metrics on this host:port.") var metrics: String?
    @Option(help: "Event loop threads.") var threads: Int = 2
    @Option(help: "Write the process id here, for `strait proxy reload`.") var pidFile: String = defaultPidFile
    @Option(help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

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
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: one of trace, debug, info, notice, warning, error") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "strait.proxy")
        guard (1...64).contains(threads) else { throw ValidationError("--threads: from 1 to 64") }

        ProxySignals.install()
        let proxy: Proxy
        do {
            proxy = try Proxy(config: loaded, loopCount: threads, logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        try? "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
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
        guard let path = Datapath(rawValue: datapath) else { throw ValidationError("--datapath: one of auto, sockmap, splice, copy") }
        var quick = ProxyConfig.quickStart(listen: listenAddress, upstreams: upstreams, datapath: path)
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
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else {
            throw ValidationError("no running proxy: \(pidFile) is missing or unreadable (is `strait proxy` running with this --pid-file?)")
        }
        guard kill(pid, SIGHUP) == 0 else {
            throw ValidationError("cannot signal process \(pid) from \(pidFile): errno \(errno) (stale pid file?)")
        }
        print("reload sent to process \(pid)")
    }
}

/// SIGHUP, SIGINT and SIGTERM turned into values the command waits for.
enum ProxySignals {
    private static let pending = Atomic<Int32>(0)

    static func install() {
        for number in [SIGHUP, SIGINT, SIGTERM] {
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
