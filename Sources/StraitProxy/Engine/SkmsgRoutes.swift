import StraitNet
import StraitSystem

/// The skmsg datapath's part of a relay: routes that let local endpoints' sends go straight into
/// the proxy's sockets (``EndpointForwarder``), and the forwarded counts last told to the kernel,
/// so an endpoint switches only once the relay holds none of its bytes. The relay keeps copying
/// whatever still arrives on its sockets: bytes sent before an endpoint switches, and everything
/// from an endpoint that is not local.
///
/// Owned by a ``UserspaceDriver``; ``release()`` takes the routes out of the kernel's maps.
/// Loop thread only.
final class SkmsgRoutes {
    unowned let relay: Relay
    let endpoints: EndpointForwarder
    private var route: EndpointForwarder.Route
    private var publishedUp: UInt64
    private var publishedDown: UInt64
    private var lastStreamCheck: UInt64 = 0
    private var streamBytesSeen: UInt64 = 0

    private init(relay: Relay, endpoints: EndpointForwarder, route: EndpointForwarder.Route, up: Direction, down: Direction) {
        self.relay = relay
        self.endpoints = endpoints
        self.route = route
        publishedUp = up.bytesForwarded
        publishedDown = down.bytesForwarded
    }

    /// Arms the routes of `relay`'s two sockets, or nil when they cannot be (said why, at debug
    /// level for a side that already half-closed, else as a warning and a counted error).
    static func arm(relay: Relay, endpoints: EndpointForwarder, up: Direction, down: Direction) -> SkmsgRoutes? {
        do {
            let route = try endpoints.arm(
                clientSide: relay.client, upstreamSide: relay.upstream, forwardedUp: up.bytesForwarded, forwardedDown: down.bytesForwarded,
                maxInFlight: relay.settings.config.maxInFlight ?? ListenerConfig.defaultMaxInFlight)
            return SkmsgRoutes(relay: relay, endpoints: endpoints, route: route, up: up, down: down)
        } catch {
            if case .sockmap(let failure) = error, failure.errno == .notSupported {
                // A socket past ESTABLISHED (its peer already sent FIN) cannot join a sockhash; the
                // little that is left of this connection goes on copy.
                relay.context.logger.debug("skmsg skipped: a side has already half-closed")
                return nil
            }
            relay.context.metrics.error("skmsg_routes")
            relay.context.logger.warning("skmsg routes failed, staying on copy: \(error)")
            return nil
        }
    }

    /// Whether an endpoint of the relay is local and routed.
    var routed: Bool { route.clientTracked || route.upstreamTracked }

    /// After a pump: an upstream server's socket may be established a moment after the proxy's
    /// connect returned, so look for untracked endpoints for ``ProxyTimings/endpointLookWindow``;
    /// then tell the kernel what the relay has forwarded, so a waiting endpoint can switch.
    func publish(up: Direction, down: Direction) {
        if !(route.clientTracked && route.upstreamTracked) && relay.loop.now &- relay.startedAt < relay.timings.endpointLookWindow.wholeNanoseconds {
            var current = route
            endpoints.refresh(&current, forwardedUp: up.bytesForwarded, forwardedDown: down.bytesForwarded)
            if current.clientTracked != route.clientTracked { publishedUp = up.bytesForwarded }
            if current.upstreamTracked != route.upstreamTracked { publishedDown = down.bytesForwarded }
            route = current
        }
        // An endpoint can switch only once the relay holds none of its bytes: publish then.
        if up.bytesForwarded != publishedUp && up.pendingBytes == 0 {
            endpoints.publish(route, .client, forwarded: up.bytesForwarded)
            publishedUp = up.bytesForwarded
        }
        if down.bytesForwarded != publishedDown && down.pendingBytes == 0 {
            endpoints.publish(route, .upstream, forwarded: down.bytesForwarded)
            publishedDown = down.bytesForwarded
        }
    }

    /// Bytes an endpoint redirects never wake the relay: every ``ProxyTimings/activityCheck``,
    /// TCP's counters tell whether any moved. True when some did since the last look.
    func sawActivity(now: UInt64, up: Direction, down: Direction) -> Bool {
        guard routed, now &- lastStreamCheck >= relay.timings.activityCheck.wholeNanoseconds else { return false }
        lastStreamCheck = now
        guard let sent = streamBytes(up: up, down: down), sent.up &+ sent.down != streamBytesSeen else { return false }
        streamBytesSeen = sent.up &+ sent.down
        return true
    }

    /// Bytes relayed each way: what went through the proxy's sockets, counted by TCP (acknowledged
    /// plus queued, including what endpoints redirected into them), plus what endpoints sent
    /// straight into each other's receive queues.
    func streamBytes(up: Direction, down: Direction) -> (up: UInt64, down: UInt64)? {
        // Once a side's write half is shut, its FIN is counted too (it takes a sequence number).
        guard let intoUpstream = relay.writtenBytes(into: relay.upstream, finSent: up.sinkShut),
              let intoClient = relay.writtenBytes(into: relay.client, finSent: down.sinkShut)
        else { return nil }
        let direct = endpoints.ingressBytes(route)
        return (intoUpstream &+ direct.fromClient, intoClient &+ direct.fromUpstream)
    }

    /// Takes the routes out of the kernel's maps. Once only.
    func release() {
        endpoints.release(route)
    }
}
