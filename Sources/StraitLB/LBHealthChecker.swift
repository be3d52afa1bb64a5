import Logging
import StraitNet
import StraitProxy

/// `strait lb`'s backend checks: the proxy's ``HealthChecker`` (one checker on StraitNet's loop for
/// both), keyed by backend. It owns nothing in the kernel; the daemon applies each down set.
public typealias LBHealthChecker = HealthChecker<LBBackendRef>

extension HealthChecker where Key == LBBackendRef {
    /// Checks on `group`'s next loop; after each change (logged), `onChange` hears on that loop
    /// every backend down now. A backend starts as up.
    public convenience init(group: EventLoopGroup, logger: Logger, onChange: @escaping @Sendable (Set<LBBackendRef>) -> Void) {
        self.init(loop: group.next()) { change in
            logger.notice("backend \(change.up ? "up" : "down")", metadata: ["service": "\(change.target.group)", "backend": "\(change.target.key.backend)"])
            onChange(change.down)
        }
    }

    /// Checks the backends of `services` that have a health check (any thread). A backend checked
    /// before keeps its state; one no longer checked is dropped, and counts as up.
    public func configure(_ services: [LBServiceConfig]) {
        configure(services.flatMap { service -> [Target] in
            guard let check = service.healthCheck else { return [] }
            return service.backends.map { backend in
                Target(key: LBBackendRef(service: service.name, backend: backend.endpoint), address: .ip(backend.address, port: backend.port), check: check, group: service.name)
            }
        })
    }
}
