import StraitSystem

extension Server {
    /// Stops accepting at once, then drains in two steps, for a restart: for `idleGrace` connections
    /// may finish by themselves (a connection accepted just before the restart has not sent its
    /// first request yet, and closing it as idle would lose it); then ``shutdown(gracePeriod:)``
    /// closes idle connections, lets running requests finish, and closes what is left when
    /// `deadline` (counted from the start) has passed. Returns when every connection is closed.
    public func drain(idleGrace: Duration = .milliseconds(500), deadline: Duration) async {
        stopAcceptingNow()
        let start = ContinuousClock.now
        let grace = min(idleGrace, deadline)
        while connectionCount > 0 && ContinuousClock.now - start < grace {
            try? await Task.sleep(for: .milliseconds(2))
        }
        let remaining = deadline - (ContinuousClock.now - start)
        await shutdown(gracePeriod: max(remaining, .zero))
    }
}

extension Server {
    /// Stops accepting now: every acceptor leaves its loop and closes its listener descriptor
    /// (the listening sockets live on in whoever else holds them, e.g. the process they were handed
    /// to). Returns once no loop of this server will accept again. Not from one of the group's loops.
    public func stopAccepting() {
        stopAcceptingNow()
    }
}
