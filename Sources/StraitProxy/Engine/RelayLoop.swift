import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The proxy's share of one StraitNet ``EventLoop``: an ``Acceptor`` per listener and the relays
/// they started, which stay on this loop to the end. The loop itself belongs to the proxy's
/// ``EventLoopGroup``, which also serves `/metrics` and runs the health checks.
///
/// Loop thread only (``Proxy`` reaches it with ``EventLoop/execute(_:)``).
final class RelayLoop: @unchecked Sendable {
    let loop: EventLoop
    let context: ProxyContext
    private var relays: [ObjectIdentifier: Relay] = [:]
    private var acceptors: [ObjectIdentifier: Acceptor] = [:]

    init(loop: EventLoop, context: ProxyContext) {
        self.loop = loop
        self.context = context
    }

    /// Starts accepting on `listener` here (every loop polls every listener, `EPOLLEXCLUSIVE`).
    func startAccepting(_ listener: ListenerRuntime) {
        let acceptor = Acceptor(home: self, listener: listener)
        guard acceptor.resume() else { return }
        acceptors[ObjectIdentifier(listener)] = acceptor
    }

    /// Stops accepting on `listener` here, before its socket is closed.
    func stopAccepting(_ listener: ListenerRuntime) {
        acceptors.removeValue(forKey: ObjectIdentifier(listener))?.stop()
    }

    func add(_ relay: Relay) { relays[ObjectIdentifier(relay)] = relay }
    func remove(_ relay: Relay) { relays[ObjectIdentifier(relay)] = nil }

    /// Closes every relay on this loop (end of a drain).
    func finishAllRelays(_ end: RelayEnd) {
        for relay in Array(relays.values) { relay.finish(end) }
    }
}

/// Accepts on one listener for one loop: level-triggered, up to ``burst`` connections a wake-up,
/// so other loops get a share of a burst.
///
/// Out of descriptors (`EMFILE`, `ENFILE`) or kernel memory (`ENOBUFS`, `ENOMEM`), the pending
/// connection stays in the listen queue and the level-triggered listener would wake this loop again
/// at once: so the acceptor leaves the loop for ``ProxyTimings/acceptBackoff`` and comes back on a
/// timer, counts each pause (`strait_proxy_errors_total{kind="accept_no_descriptors"}`), logs once
/// per episode and once when accepting works again. Relays already running are not touched.
///
/// At `max_connections` (a slot is reserved before each accept, ``ListenerRuntime/reserveSlot(limit:)``)
/// the acceptor leaves the loop too, so further clients wait in the kernel's listen queue, their
/// handshake done, rather than being accepted and closed; the next connection to end
/// (``ListenerRuntime/releaseSlot()``) brings it back through ``EventLoop/execute(_:)``. Each
/// time the limit is reached counts `strait_proxy_listener_limit_reached_total{listener}`.
///
/// Before each accept it also takes its listener's datapath's descriptors from the proxy's
/// ``DescriptorBudget``; without room it leaves the loop the same way, clients wait in the listen
/// queue, and the next relay to end brings it back. Each episode counts
/// `strait_proxy_descriptor_budget_reached_total`; one log line covers a stretch of pressure
/// (until relays hold half the budget or less). The `EMFILE` back-off above is
/// the last line of defence behind it.
///
/// Loop thread only (`@unchecked Sendable` so a slot's release on another loop can wake it there).
final class Acceptor: DescriptorHandler, @unchecked Sendable {
    unowned let home: RelayLoop
    let listener: ListenerRuntime
    private var registration: DescriptorRegistration?
    private var backoff: LoopTimer?
    /// Set by ``stop()``: a late wake-up (backoff timer, released slot) must not poll again.
    private var stopped = false

    /// Most connections accepted per wake-up.
    static let burst = 64

    init(home: RelayLoop, listener: ListenerRuntime) {
        self.home = home
        self.listener = listener
    }

    private var context: ProxyContext { home.context }

    /// Puts the listener on the loop; false (and said why) when epoll refuses it.
    @discardableResult
    func resume() -> Bool {
        guard !stopped, !listener.closed.load(ordering: .relaxed), registration == nil else { return false }
        do {
            registration = try home.loop.register(descriptor: listener.fd, interest: [.readable, .exclusive], handler: self)
            return true
        } catch {
            context.logger.warning("cannot poll listener \(listener.address): \(error)")
            return false
        }
    }

    /// Leaves the loop for good (the listener is about to be closed).
    func stop() {
        stopped = true
        backoff?.cancel()
        backoff = nil
        registration?.deregister()
        registration = nil
    }

    func descriptorReady(_ registration: DescriptorRegistration, events: IOEvents) {
        for _ in 0..<Self.burst {
            let settings = listener.settings.withLock { $0 }
            guard listener.reserveSlot(limit: settings.config.maxConnections) else {
                pauseAtLimit(settings.config.name)
                return
            }
            let cost = DescriptorBudget.descriptors(for: settings.config.datapath)
            guard context.descriptors.take(cost) else {
                listener.releaseSlot()
                pauseForDescriptors(cost)
                return
            }
            let accepted: OwnedDescriptor
            do {
                guard case .done(let fd) = try SocketCall.accept(listener.fd) else {
                    listener.releaseSlot()
                    context.descriptors.giveBack(cost)
                    return
                }
                accepted = OwnedDescriptor(taking: fd)  // closed by whoever holds it last: from here, the relay
            } catch {
                listener.releaseSlot()
                context.descriptors.giveBack(cost)
                switch error.errno {
                case .tooManyOpenFiles, .tooManyOpenFilesInSystem, .noBufferSpace, .noMemory:
                    pause(error)
                case .connectionAbort:
                    break
                default:
                    context.metrics.error("accept")
                    context.logger.warning("accept failed: \(error)")
                }
                return
            }
            if listener.outOfDescriptors.exchange(false, ordering: .relaxed) {
                context.logger.notice("accepting again on \(listener.address)")
            }
            try? SocketCall.setOption(accepted.rawValue, level: CInt(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            context.metrics.connectionOpened(listener: settings.config.name)
            let peer = SocketAddress.peer(of: accepted.rawValue)
            let relay = Relay(home: home, context: context, listener: listener, settings: settings, client: accepted, clientAddress: peer)
            relay.start()
        }
    }

    /// Takes the listening socket off the loop (new clients wait in the kernel's backlog) and
    /// returns the callback that puts it back: run from any thread, it resumes on this loop.
    private func leaveLoop() -> @Sendable () -> Void {
        registration?.deregister()
        registration = nil
        let loop = home.loop
        return { [weak self] in
            guard let self else { return }
            loop.execute { self.resume() }
        }
    }

    /// Leaves the loop until a slot is released; clients queue in the listen backlog meanwhile.
    private func pauseAtLimit(_ name: String) {
        if listener.waitForSlot(leaveLoop()) {
            context.metrics.listenerLimitReached(listener: name)
        }
        // A connection that ended between the reservation and the wait woke nobody: look again.
        if listener.active.load(ordering: .sequentiallyConsistent) < listener.settings.withLock({ $0.config.maxConnections }) { resume() }
    }

    /// Leaves the loop until a relay gives descriptors back (``DescriptorBudget``); clients
    /// queue in the listen backlog meanwhile. Counted once per episode over the whole proxy.
    private func pauseForDescriptors(_ cost: Int) {
        if context.descriptors.waitForRoom(leaveLoop()) {
            context.metrics.descriptorBudgetReached()
        }
        if context.descriptors.shouldLogFull() {
            let budget = context.descriptors.snapshot
            context.logger.notice("descriptor budget full (\(budget.held) of \(budget.capacity ?? 0) held by relays, \(budget.reserve) kept in reserve under RLIMIT_NOFILE): clients wait in the listen queue until connections end")
        }
        // A relay that ended between the try and the wait woke nobody: look again.
        if context.descriptors.fits(cost) { resume() }
    }

    private func pause(_ error: SystemCallError) {
        context.metrics.error("accept_no_descriptors")
        let pause = context.timings.acceptBackoff
        if !listener.outOfDescriptors.exchange(true, ordering: .relaxed) {
            let limit = (try? ResourceLimits.openFiles()).map { " (RLIMIT_NOFILE \($0.soft))" } ?? ""
            context.logger.warning("accept on \(listener.address) failed: \(error)\(limit); pausing it \(pause) at a time until descriptors free up, established connections go on")
        }
        registration?.deregister()
        registration = nil
        let timer = backoff ?? LoopTimer(loop: home.loop) { [weak self] in self?.resume() }
        backoff = timer
        timer.schedule(after: pause)
    }
}
