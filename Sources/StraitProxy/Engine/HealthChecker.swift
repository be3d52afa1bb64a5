import Logging
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Active TCP health checks, run on one proxy loop: every `interval`, a non-blocking connect to
/// each upstream of each checked cluster; connected within `timeout` is a success. `fall` failures
/// in a row mark an upstream down (new connections avoid it), `rise` successes bring it back.
final class HealthChecker: TickHandler, PollHandler {
    private final class Target {
        let state: UpstreamState
        var check: HealthCheck
        var cluster: String
        var nextAt: UInt64 = 0
        var probe: CInt = -1
        var probeDeadline: UInt64 = 0
        var successes = 0
        var failures = 0
        init(state: UpstreamState, check: HealthCheck, cluster: String) {
            self.state = state
            self.check = check
            self.cluster = cluster
        }
    }

    let loop: ProxyLoop
    let context: ProxyContext
    private var targets: [Target] = []
    private var byProbe: [CInt: Target] = [:]

    init(loop: ProxyLoop, context: ProxyContext) {
        self.loop = loop
        self.context = context
    }

    /// Replaces the checked set (on start and reload); state of upstreams kept across is kept.
    /// Upstreams no longer checked are marked up. Loop thread.
    func configure(_ clusters: [ClusterRuntime]) {
        var next: [Target] = []
        for cluster in clusters {
            for member in cluster.members {
                guard let check = cluster.config.healthCheck else {
                    member.healthy.store(true, ordering: .relaxed)
                    continue
                }
                if let existing = targets.first(where: { $0.state === member }) {
                    existing.check = check
                    existing.cluster = cluster.config.name
                    if !next.contains(where: { $0 === existing }) { next.append(existing) }
                } else if !next.contains(where: { $0.state === member }) {
                    next.append(Target(state: member, check: check, cluster: cluster.config.name))
                }
            }
        }
        for gone in targets where !next.contains(where: { $0 === gone }) {
            endProbe(gone)
            gone.state.healthy.store(true, ordering: .relaxed)
        }
        targets = next
        for target in targets { context.metrics.upstreamHealth(cluster: target.cluster, upstream: "\(target.state.address)", up: target.state.healthy.load(ordering: .relaxed)) }
    }

    func tick(now: UInt64) {
        for target in targets {
            if target.probe >= 0 {
                if now >= target.probeDeadline { record(target, success: false) }
                continue
            }
            guard now >= target.nextAt else { continue }
            target.nextAt = now + target.check.interval.wholeNanoseconds
            startProbe(target, now: now)
        }
    }

    private func startProbe(_ target: Target, now: UInt64) {
        do {
            let fd = try SocketCall.socket(domain: target.state.address.domain, type: CInt(SOCK_STREAM.rawValue))
            target.probe = fd
            target.probeDeadline = now + target.check.timeout.wholeNanoseconds
            byProbe[fd] = target
            let immediate = try target.state.address.withSockaddr { pointer, length throws(SystemCallError) in try SocketCall.connect(fd, pointer, length) }
            if immediate {
                record(target, success: true)
            } else {
                try loop.register(fd, events: ProxyLoop.output, handler: self)
            }
        } catch {
            record(target, success: false)
        }
    }

    func handle(fd: CInt, events: UInt32) {
        guard let target = byProbe[fd] else { return }
        let error = (try? SocketCall.option(fd, level: SOL_SOCKET, name: SO_ERROR)) ?? EIO
        record(target, success: error == 0 && events & ProxyLoop.error == 0)
    }

    private func endProbe(_ target: Target) {
        guard target.probe >= 0 else { return }
        loop.deregister(target.probe)
        byProbe[target.probe] = nil
        // Close with a reset: a check must not leave TIME_WAIT sockets behind on the proxy.
        RelayCall.closeWithReset(target.probe)
        target.probe = -1
    }

    private func record(_ target: Target, success: Bool) {
        endProbe(target)
        let wasUp = target.state.healthy.load(ordering: .relaxed)
        if success {
            target.successes += 1
            target.failures = 0
            if !wasUp && target.successes >= target.check.rise { setHealth(target, up: true) }
        } else {
            target.failures += 1
            target.successes = 0
            if wasUp && target.failures >= target.check.fall { setHealth(target, up: false) }
        }
    }

    private func setHealth(_ target: Target, up: Bool) {
        target.state.healthy.store(up, ordering: .relaxed)
        context.metrics.upstreamHealth(cluster: target.cluster, upstream: "\(target.state.address)", up: up)
        context.logger.notice("upstream \(up ? "up" : "down")", metadata: ["cluster": "\(target.cluster)", "upstream": "\(target.state.address)"])
    }

    /// Closes probes in flight and leaves the loop's tickers (which would otherwise keep this
    /// checker, and through it the proxy's context and kernel attachments, alive). Loop thread.
    func stop() {
        for target in targets { endProbe(target) }
        targets = []
        loop.removeTicker(self)
    }
}
