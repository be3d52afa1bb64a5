import Dispatch
import Foundation
import Logging
import StraitNet
import StraitSystem
import Synchronization

/// A reload's outcome, as the control socket answers it and `strait proxy reload` prints it.
public struct ReloadVerdict: Codable, Sendable, Equatable {
    /// The file checked and the proxy runs it now.
    public var applied: Bool
    /// Why not: every mistake of the file (`file:line:column: message`), or what failed while
    /// applying it (a port taken, say). Empty when applied.
    public var errors: [String]
    /// What was applied beside the listeners, or needs a restart (a moved metrics address, say).
    public var notes: [String]
    /// ``ProxyConfig/fingerprint`` of what runs after the reload (the old one when rejected).
    public var configFingerprint: String

    /// A verdict as given; ``ProxyController/reload()`` makes one per reload.
    public init(applied: Bool, errors: [String], notes: [String], configFingerprint: String) {
        self.applied = applied
        self.errors = errors
        self.notes = notes
        self.configFingerprint = configFingerprint
    }
}

/// What `strait proxy drain` changed.
public struct DrainOutcome: Codable, Sendable, Equatable {
    /// The upstream's address.
    public var upstream: String
    /// True: it takes no new connection now; false: it takes them again.
    public var draining: Bool
    /// Its connections still open (they finish on their own).
    public var active: Int
    /// The clusters that list it.
    public var clusters: [String]
}

/// What went wrong with a control command that is not a rejected reload (an unknown upstream, a
/// malformed request): the control socket's answer, and what `strait proxy` prints before exiting 1.
public struct ControlFailure: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// What failed and what to do.
    public var error: String

    /// A failure whose `error` says what failed and what to do: the control socket answers it as
    /// JSON and `strait proxy` prints it.
    public init(_ error: String) { self.error = error }

    /// ``error``, as `strait proxy` prints it.
    public var description: String { error }
}

/// The one way a running proxy's configuration changes: SIGHUP (systemd's `ExecReload`) and the
/// control socket's `reload` both call ``reload()``, which reads the file, checks every part of it
/// (``ProxyConfigLoader/check(path:)``), moves the metrics endpoint when `metrics:` changed, applies
/// the rest (``Proxy/reload(_:)``), and returns the verdict, counted in
/// `strait_proxy_reloads_total{result}`. Reloads run one at a time; a rejected one leaves the
/// running configuration serving, untouched.
///
/// Also `drain` and `undrain` of one upstream, and ``status()``. Owns nothing the proxy does not:
/// it holds the proxy and the path of its file.
public final class ProxyController: Sendable {
    /// The proxy it controls.
    public let proxy: Proxy
    /// The configuration file re-read on reload; nil when the proxy runs from command-line flags.
    public let configPath: String?
    private let running: Mutex<ProxyConfig>
    /// Serializes reloads (SIGHUP on the main thread, `reload` on the control socket's loop, the
    /// DNS refresh thread).
    private let reloading = Mutex(())
    private let refreshStop = Atomic<Bool>(false)
    private let refreshWake = DispatchSemaphore(value: 0)
    private let refreshDone = DispatchSemaphore(value: 0)
    private let refreshing = Atomic<Bool>(false)

    /// Controls `proxy`, which runs `config` (read from `configPath`, if any).
    public init(proxy: Proxy, config: ProxyConfig, configPath: String?) {
        self.proxy = proxy
        self.configPath = configPath
        running = Mutex(config)
    }

    /// The configuration running now.
    public var config: ProxyConfig { running.withLock { $0 } }

    /// Re-reads the file and applies it, or says every reason it did not. Blocks for the check and
    /// the apply (milliseconds for a small file); call from any thread but a proxy loop's.
    public func reload() -> ReloadVerdict {
        reloading.withLock { _ in
            let verdict = reloadNow()
            proxy.metrics.reloadFinished(applied: verdict.applied, errors: verdict.errors)
            if verdict.applied {
                proxy.logger.notice("reload applied", metadata: ["fingerprint": "\(verdict.configFingerprint)", "notes": "\(verdict.notes.joined(separator: "; "))"])
            } else {
                proxy.logger.error("reload rejected, keeping the running configuration: \(verdict.errors.joined(separator: "; "))")
            }
            return verdict
        }
    }

    private func reloadNow() -> ReloadVerdict {
        let current = config
        func rejected(_ errors: [String]) -> ReloadVerdict {
            ReloadVerdict(applied: false, errors: errors, notes: [], configFingerprint: current.fingerprint)
        }
        guard let configPath else {
            return rejected(["the proxy runs from command-line flags (--listen/--upstream): there is no file to re-read; restart it with --config FILE"])
        }
        let next: ProxyConfig
        do { next = try ProxyConfigLoader.check(path: configPath) } catch { return rejected(error.errors.map(\.description)) }
        var notes: [String] = []
        // The new metrics endpoint binds before anything changes, so a taken address rejects the
        // whole reload; the old endpoint closes only once the rest is applied.
        var moved: PlainHTTPEndpoint?
        let metricsChanged = next.metricsAddress != current.metricsAddress
        if metricsChanged, let address = next.metricsAddress {
            do {
                moved = try proxy.makeObservabilityEndpoint(address, listener: nil)
            } catch {
                return rejected(["`metrics` \(address): cannot bind: \(error); the running configuration stays (metrics on \(current.metricsAddress.map { "\($0)" } ?? "none"))"])
            }
        }
        do {
            try proxy.reload(next)
        } catch {
            if let moved { Self.runBlocking { await moved.shutdown() } }
            return rejected(["\(error)"])
        }
        if metricsChanged {
            let previous = proxy.metricsServer
            proxy.metricsServer = moved
            if let previous { Self.runBlocking { await previous.shutdown() } }
            notes.append("metrics moved from \(current.metricsAddress.map { "\($0)" } ?? "none") to \(moved.map { "\($0.address)" } ?? "none")")
        }
        if next.accessLogFile != current.accessLogFile {
            notes.append("`access_log_file` changed: it applies at the next `strait proxy restart`")
        }
        if next.endpointsCgroup != current.endpointsCgroup {
            notes.append("`endpoints_cgroup` changed: it applies at the next `strait proxy restart`")
        }
        running.withLock { $0 = next }
        return ReloadVerdict(applied: true, errors: [], notes: notes, configFingerprint: next.fingerprint)
    }

    /// Stops (`draining` true) or resumes new connections to the upstream at `address`, in every
    /// cluster that lists it; its open connections go on. Survives reloads that keep the address;
    /// a restart starts undrained.
    public func drain(_ address: String, draining: Bool) throws(ControlFailure) -> DrainOutcome {
        guard let parsed = SocketAddress(parsing: address) else {
            throw ControlFailure("expected the upstream as host:port, as in the configuration (127.0.0.1:5201, \"[2001:db8::1]:5201\"), got `\(address.escapingControlCharacters)`")
        }
        let clusters = config.clusters.filter { $0.upstreams.contains { $0.address == parsed } }.map(\.name)
        guard let state = proxy.upstreamState(at: parsed), !clusters.isEmpty else {
            let known = config.clusters.flatMap { $0.upstreams.map { "\($0.address)" } }
            throw ControlFailure("no upstream \(parsed) in the running configuration; expected one of \(known.prefix(10).joined(separator: ", "))\(known.count > 10 ? ", …" : "")")
        }
        state.admission.draining.store(draining, ordering: .relaxed)
        proxy.logger.notice(draining ? "upstream draining" : "upstream undrained", metadata: ["upstream": "\(parsed)", "active": "\(state.active.load(ordering: .relaxed))"])
        return DrainOutcome(upstream: "\(parsed)", draining: draining, active: state.active.load(ordering: .relaxed), clusters: clusters)
    }

    /// Starts a thread that resolves the upstreams given by DNS name again every
    /// ``ProxyConfig/dnsRefresh`` (``refreshNames()``). Call once; ``stopRefreshingNames()`` ends it.
    public func startRefreshingNames() {
        guard !refreshing.exchange(true, ordering: .relaxed) else { return }
        let thread = Thread { [self] in
            defer { refreshDone.signal() }
            while !refreshStop.load(ordering: .relaxed) {
                let interval = Int(clamping: config.dnsRefresh.wholeNanoseconds)
                _ = refreshWake.wait(timeout: .now() + .nanoseconds(interval))
                if refreshStop.load(ordering: .relaxed) { return }
                refreshNames()
            }
        }
        thread.name = "strait-dns"
        thread.start()
    }

    /// Stops the refresh thread and waits for it (at most one resolution in progress). Call before
    /// the proxy shuts down; calling it again does nothing, and a stopped refresh does not restart.
    public func stopRefreshingNames() {
        guard refreshing.exchange(false, ordering: .relaxed) else { return }
        refreshStop.store(true, ordering: .relaxed)
        refreshWake.signal()
        refreshDone.wait()
    }

    /// Resolves every upstream name again; when an address set changed, applies the configuration
    /// with the new addresses (``Proxy/reload(_:)``: upstreams kept by address keep their state). A
    /// name that no longer resolves keeps its addresses and is counted
    /// (`strait_proxy_errors_total{kind="dns_failed"}`). Returns whether anything changed.
    @discardableResult
    public func refreshNames() -> Bool {
        reloading.withLock { _ in
            let current = config
            guard current.clusters.contains(where: { $0.upstreams.contains { $0.hostname != nil } }) else { return false }
            var next = current
            for index in next.clusters.indices {
                do { next.clusters[index].upstreams = try UpstreamResolver.refreshed(next.clusters[index]) } catch {
                    proxy.metrics.error("dns_failed")
                    proxy.logger.warning("DNS refresh: \(error); cluster \(next.clusters[index].name) keeps its addresses")
                }
            }
            guard next != current else { return false }
            do {
                try proxy.reload(next)
            } catch {
                proxy.metrics.error("dns_apply_failed")
                proxy.logger.error("DNS refresh: the new addresses could not be applied: \(error)")
                return false
            }
            running.withLock { $0 = next }
            proxy.logger.notice("DNS refresh applied new upstream addresses", metadata: ["fingerprint": "\(next.fingerprint)"])
            return true
        }
    }

    /// The proxy's status (``Proxy/status()``).
    public func status() -> ProxyStatus { proxy.status() }

    /// Runs `body` (an async shutdown) to its end from a synchronous caller: the main thread, the
    /// control socket's loop, never a concurrency-pool thread (which the body may need).
    public static func runBlocking(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await body()
            done.signal()
        }
        done.wait()
    }
}
