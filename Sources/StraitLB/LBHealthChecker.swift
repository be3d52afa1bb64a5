import Logging
import StraitNet
import StraitProxy
import StraitSystem

/// Active TCP health checks of the lb's backends, on one StraitNet event loop: every `interval`,
/// a connect to each backend of each checked service through StraitNet's ``Dialer``; connected
/// within `timeout` is a success. `fall` failures in a row mark a backend down, `rise` successes
/// bring it back, as the proxy's checks do (the same ``HealthCheck`` settings; the proxy's own
/// checker is bound to its ProxyLoop and upstream state, so this one is written on StraitNet's
/// loop instead). Every change of the down set is handed to `onChange`, which applies it to the
/// kernel; a backend starts as up.
///
/// The checker owns nothing in the kernel. All its state lives on the loop thread.
public final class LBHealthChecker: @unchecked Sendable {
    /// Loop-thread state of one checked backend (sent to the loop's closures, touched only there).
    private final class Target: @unchecked Sendable {
        let ref: LBBackendRef
        let address: SocketAddress
        var check: HealthCheck
        var up = true
        var successes = 0
        var failures = 0
        var task: ScheduledTask?

        init(ref: LBBackendRef, address: SocketAddress, check: HealthCheck) {
            self.ref = ref
            self.address = address
            self.check = check
        }
    }

    private let loop: EventLoop
    private let dialer: Dialer
    private let logger: Logger
    private let onChange: @Sendable (Set<LBBackendRef>) -> Void
    private var targets: [LBBackendRef: Target] = [:]

    /// Checks run on `group`'s next loop; `onChange` is called on that loop with every backend
    /// that is down now.
    public init(group: EventLoopGroup, logger: Logger, onChange: @escaping @Sendable (Set<LBBackendRef>) -> Void) {
        loop = group.next()
        dialer = Dialer(group: group)
        self.logger = logger
        self.onChange = onChange
    }

    /// Checks the backends of `services` that have a health check (any thread). A backend checked
    /// before keeps its state; one no longer checked is dropped, and counts as up.
    public func configure(_ services: [LBServiceConfig]) {
        loop.execute { [self] in
            var next: [LBBackendRef: Target] = [:]
            for service in services {
                guard let check = service.healthCheck else { continue }
                for backend in service.backends {
                    let ref = LBBackendRef(service: service.name, backend: backend.endpoint)
                    if let existing = targets.removeValue(forKey: ref) {
                        existing.check = check
                        next[ref] = existing
                    } else {
                        let target = Target(ref: ref, address: .ip(backend.address, port: backend.port), check: check)
                        next[ref] = target
                        probe(target)
                    }
                }
            }
            let dropped = targets.values.contains { !$0.up }
            for gone in targets.values { gone.task?.cancel() }
            targets = next
            if dropped { publish() }
        }
    }

    /// Cancels every pending check (any thread). Probes in flight finish and are ignored.
    public func stop() {
        loop.execute { [self] in
            for target in targets.values { target.task?.cancel() }
            targets = [:]
        }
    }

    /// The backends down now (loop thread).
    private var down: Set<LBBackendRef> { Set(targets.values.filter { !$0.up }.map(\.ref)) }

    private func publish() { onChange(down) }

    private func probe(_ target: Target) {
        target.task = loop.schedule(after: target.check.interval) { [self] in
            guard targets[target.ref] === target else { return }
            probe(target)
        }
        let handlers = ConnectionHandlers(onRequest: { _ in })
        dialer.connect(to: target.address, timeout: target.check.timeout, handlers: handlers) { [self] result in
            let success: Bool
            switch result {
            case .success(let connection):
                connection.close()
                success = true
            case .failure:
                success = false
            }
            loop.execute { [self] in record(target, success: success) }
        }
    }

    private func record(_ target: Target, success: Bool) {
        guard targets[target.ref] === target else { return }
        if success {
            target.successes += 1
            target.failures = 0
            guard !target.up, target.successes >= target.check.rise else { return }
            target.up = true
        } else {
            target.failures += 1
            target.successes = 0
            guard target.up, target.failures >= target.check.fall else { return }
            target.up = false
        }
        logger.notice("backend \(target.up ? "up" : "down")", metadata: ["service": "\(target.ref.service)", "backend": "\(target.ref.backend)"])
        publish()
    }
}
