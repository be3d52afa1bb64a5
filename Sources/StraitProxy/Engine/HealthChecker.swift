import Logging
import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Active TCP health checks on one StraitNet loop, for the proxy's upstreams and `strait lb`'s
/// backends alike: every `interval`, a non-blocking connect to each target (the first at once);
/// connected within `timeout` is a success. `fall` failures in a row mark a target down, `rise`
/// successes bring it back (``HealthCheck``). A target starts up; a probe still in flight when
/// the next interval comes is not doubled.
///
/// Each probe is closed with a reset, so checks leave no `TIME_WAIT` sockets behind. Every change
/// of a target's health (and a down target dropped by ``configure(_:)``, which counts as up again)
/// is handed to `onChange` on the loop's thread, with the set of targets down now.
///
/// **Ownership.** The checker owns its probe sockets and nothing else; ``stop()`` closes those in
/// flight and cancels every timer. `Key` names a target for the owner (the proxy's
/// ``UpstreamState``, the lb's backend reference). Loop-thread state; the public calls are safe
/// from any thread.
public final class HealthChecker<Key: Hashable & Sendable>: @unchecked Sendable {
    /// One thing to check: where it is and how.
    public struct Target: Sendable {
        /// Whose health this is.
        public var key: Key
        /// Where probes connect.
        public var address: SocketAddress
        /// How often, how patiently, and how many results in a row change its health.
        public var check: HealthCheck
        /// The group the target is checked for (cluster or service name), for logs and metrics.
        public var group: String

        /// A target `key` at `address`, checked by `check` for `group`.
        public init(key: Key, address: SocketAddress, check: HealthCheck, group: String) {
            self.key = key
            self.address = address
            self.check = check
            self.group = group
        }
    }

    /// A change of one target's health, as `onChange` hears it.
    public struct Change: Sendable {
        /// The target whose health changed.
        public var target: Target
        /// Its health now.
        public var up: Bool
        /// Every target down now, after this change.
        public var down: Set<Key>
    }

    /// Loop-thread state of one checked target.
    private final class Probe {
        var target: Target
        var up = true
        var successes = 0
        var failures = 0
        var socket: CInt = -1
        var registration: DescriptorRegistration?
        var interval: LoopTimer?
        var timeout: LoopTimer?

        init(target: Target) { self.target = target }
    }

    /// The loop every probe and callback runs on.
    public let loop: EventLoop
    private let onChange: @Sendable (Change) -> Void
    private var probes: [Key: Probe] = [:]

    /// A checker running on `loop`; nothing is checked until ``configure(_:)``.
    public init(loop: EventLoop, onChange: @escaping @Sendable (Change) -> Void) {
        self.loop = loop
        self.onChange = onChange
    }

    /// Replaces the checked set (any thread): a target checked before keeps its state (and its
    /// new settings apply from its next probe); a new one is probed at once; one dropped is no
    /// longer checked and, when it was down, reported up.
    public func configure(_ targets: [Target]) {
        loop.execute { [self] in
            var next: [Key: Probe] = [:]
            for target in targets where next[target.key] == nil {
                if let existing = probes.removeValue(forKey: target.key) {
                    let intervalChanged = existing.target.check.interval != target.check.interval
                    existing.target = target
                    if intervalChanged { existing.interval?.schedule(every: target.check.interval) }
                    next[target.key] = existing
                } else {
                    let probe = Probe(target: target)
                    next[target.key] = probe
                    let interval = LoopTimer(loop: loop) { [weak self, unowned probe] in self?.start(probe) }
                    probe.interval = interval
                    interval.schedule(every: target.check.interval)
                    start(probe)
                }
            }
            let dropped = probes.values
            probes = next
            for probe in dropped {
                end(probe)
                probe.interval?.cancel()
                if !probe.up { onChange(Change(target: probe.target, up: true, down: down)) }
            }
        }
    }

    /// Closes probes in flight and cancels every timer (any thread); `onChange` is not called again.
    public func stop() {
        loop.execute { [self] in
            for probe in probes.values {
                end(probe)
                probe.interval?.cancel()
            }
            probes = [:]
        }
    }

    /// The targets down now (loop thread).
    private var down: Set<Key> { Set(probes.values.filter { !$0.up }.map(\.target.key)) }

    private func start(_ probe: Probe) {
        guard probe.socket < 0, probes[probe.target.key] === probe else { return }
        do {
            let fd = try SocketCall.socket(domain: probe.target.address.domain, type: CInt(SOCK_STREAM.rawValue))
            probe.socket = fd
            let immediate = try SocketCall.connect(fd, to: probe.target.address)
            if immediate {
                record(probe, success: true)
                return
            }
            probe.registration = try loop.register(descriptor: fd, interest: .writable, handler: ProbeHandler { [weak self, unowned probe] events in
                let error = (try? SocketCall.option(fd, level: SOL_SOCKET, name: SO_ERROR)) ?? EIO
                self?.record(probe, success: error == 0 && !events.contains(.error))
            })
            let timeout = probe.timeout ?? LoopTimer(loop: loop) { [weak self, unowned probe] in self?.record(probe, success: false) }
            probe.timeout = timeout
            timeout.schedule(after: probe.target.check.timeout)
        } catch {
            record(probe, success: false)
        }
    }

    /// Closes the probe in flight, if any, with a reset.
    private func end(_ probe: Probe) {
        probe.timeout?.cancel()
        probe.registration?.deregister()
        probe.registration = nil
        guard probe.socket >= 0 else { return }
        RelayCall.closeWithReset(probe.socket)
        probe.socket = -1
    }

    private func record(_ probe: Probe, success: Bool) {
        end(probe)
        guard probes[probe.target.key] === probe else { return }
        if success {
            probe.successes += 1
            probe.failures = 0
            guard !probe.up, probe.successes >= probe.target.check.rise else { return }
            probe.up = true
        } else {
            probe.failures += 1
            probe.successes = 0
            guard probe.up, probe.failures >= probe.target.check.fall else { return }
            probe.up = false
        }
        onChange(Change(target: probe.target, up: probe.up, down: down))
    }
}

/// Hears a probe socket's events for a ``HealthChecker`` (the registration holds it until the
/// probe ends).
private final class ProbeHandler: DescriptorHandler {
    let ready: (IOEvents) -> Void
    init(_ ready: @escaping (IOEvents) -> Void) { self.ready = ready }
    func descriptorReady(_ registration: DescriptorRegistration, events: IOEvents) { ready(events) }
}
