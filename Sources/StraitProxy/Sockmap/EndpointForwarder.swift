import Foundation
import StraitBPF
import StraitKernelABI
import StraitNet
import StraitSystem
import Synchronization

/// The `skmsg` datapath: for clients and upstream servers running on this host, inside the
/// endpoints cgroup, each endpoint's `sendmsg` puts its bytes straight into the proxy's socket that
/// faces the other endpoint (an `sk_msg` egress redirect), in the sender's own system call; and when
/// both endpoints are local, straight into the other endpoint's receive queue (an ingress redirect)
/// once that endpoint has read what reached it over TCP. Userspace never touches the payload and no
/// workqueue runs, so a relayed stream costs about what a direct connection costs; the proxy's two
/// connections still carry FIN and RST, so half-close, resets and accounting work as on `copy`.
///
/// Loads `endpoint.bpf.c`, attaches its `sk_msg` program to the endpoint hash and its `sock_ops`
/// program to `cgroup` as BPF links, which go away with this object (nothing is pinned, nothing
/// outlives the proxy). Only sockets created in `cgroup` (or below) are accelerated; others relay
/// on `copy`, their bytes untouched.
///
/// **Order.** An endpoint's bytes sent before its ``Route`` exists travel its own connection and
/// are copied by the proxy. The kernel switches a direction to redirecting at the first send that
/// finds every earlier byte already written by the proxy (``publish(_:_:forwarded:)`` keeps that count), so
/// the switch never reorders, loses or duplicates bytes. A sender that never pauses with bytes in
/// flight stays on `copy`.
public final class EndpointForwarder: @unchecked Sendable {
    private let object: BPFObject
    private let socks: TypedMap<strait_sock_key, UInt64>
    private let targets: TypedMap<UInt64, UInt64>
    private let filter: TypedMap<strait_endpoint_filter_key, UInt8>
    private let routes: TypedMap<strait_sock_key, strait_endpoint_route>
    private let progress: TypedMap<strait_sock_key, strait_endpoint_progress>
    private let stats: TypedMap<UInt32, strait_endpoint_counters>
    private var links: [BPFLink] = []
    /// The cgroup whose sockets are endpoints.
    public let cgroup: Cgroup
    private let lock = Mutex<Void>(())

    /// Loads the programs and attaches them. Throws ``BPFError`` without the capabilities for BPF,
    /// or when `cgroup` is not a cgroup v2 directory.
    public init(cgroup: Cgroup) throws(BPFError) {
        self.cgroup = cgroup
        object = try BPFObjectSpec(embedded: .endpoint).load()
        do throws(BPFError) {
            let socksMap = try object.map("endpoint_socks")
            socks = try socksMap.typed(key: strait_sock_key.self, value: UInt64.self)
            targets = try object.map("endpoint_targets").typed(key: UInt64.self, value: UInt64.self)
            filter = try object.map("endpoint_filter").typed(key: strait_endpoint_filter_key.self, value: UInt8.self)
            routes = try object.map("endpoint_routes").typed(key: strait_sock_key.self, value: strait_endpoint_route.self)
            progress = try object.map("endpoint_progress").typed(key: strait_sock_key.self, value: strait_endpoint_progress.self)
            stats = try object.map("endpoint_stats").typed(key: UInt32.self, value: strait_endpoint_counters.self)
            // sk_msg first, so no socket enters the hash before its send hook is there.
            links.append(try object.program("strait_endpoint_msg").attach(sockmap: socksMap, as: .messageVerdict))
            links.append(try object.program("strait_endpoint_sockops").attach(cgroup: cgroup))
        } catch {
            for link in links { try? link.close() }
            object.close()
            throw error
        }
    }

    deinit {
        detach()
        object.close()
    }

    /// Detaches `sock_ops` from the cgroup, then `sk_msg` from the hash: new sockets are no longer
    /// tracked, and tracked ones send on their own connections. Idempotent.
    public func detach() {
        lock.withLock { _ in
            for link in links.reversed() { try? link.close() }
            links = []
        }
    }

    /// Which sockets count as endpoints from now on: clients connecting to one of `listeners` and
    /// servers accepting on one of `upstreams`. A wildcard listener address matches any address on
    /// its port. Sockets established earlier keep what was decided for them.
    public func mark(listeners: [SocketAddress], upstreams: [SocketAddress]) throws(BPFError) {
        let wanted = listeners.compactMap { Self.filterKey($0, role: STRAIT_ENDPOINT_CLIENT) } + upstreams.compactMap { Self.filterKey($0, role: STRAIT_ENDPOINT_UPSTREAM) }
        try lock.withLock { _ throws(BPFError) in
            for key in wanted { try filter.update(key, 1) }
            for key in try filter.keys() where !wanted.contains(where: { Self.same($0, key) }) { _ = try filter.delete(key) }
        }
    }

    /// One relay's routes: which endpoint sockets are local and switchable, and where their bytes go.
    public struct Route: Sendable {
        /// Each endpoint's key for its own socket (its address first).
        let clientKey: strait_sock_key
        let upstreamKey: strait_sock_key
        /// The cookies of the proxy's sockets facing the client and the upstream.
        let clientSideCookie: UInt64
        let upstreamSideCookie: UInt64
        /// Whether each endpoint is in the endpoint hash (local, in the cgroup) and so routed.
        public internal(set) var clientTracked: Bool
        /// The same for the upstream endpoint. Once true it stays true:
        /// ``refresh(_:forwardedUp:forwardedDown:)`` looks up only the endpoints not found yet.
        public internal(set) var upstreamTracked: Bool
        /// Most bytes unread in an endpoint's ingress queue before the other endpoint's sends go
        /// back to egress (see `struct strait_endpoint_route`).
        let maxInFlight: UInt32
    }

    /// Which endpoint a published count belongs to.
    public enum Sender: Sendable { case client, upstream }

    /// Makes the proxy's sockets `clientSide` (accepted from the client) and `upstreamSide`
    /// (connected to the upstream) redirect targets, and routes each tracked endpoint's sends into
    /// the socket facing the other endpoint. `forwardedUp`/`forwardedDown`: bytes the proxy has
    /// already written each way. Untracked endpoints get no route; ``refresh(_:forwardedUp:forwardedDown:)`` looks again.
    /// `maxInFlight` bounds what an endpoint may park in the other endpoint's receive queue.
    public func arm(clientSide: CInt, upstreamSide: CInt, forwardedUp: UInt64, forwardedDown: UInt64, maxInFlight: Int) throws(ProxyError) -> Route {
        var route: Route
        let (clientKey, upstreamKey) = (try Self.remoteEndpointKey(of: clientSide), try Self.remoteEndpointKey(of: upstreamSide))
        do {
            route = Route(
                clientKey: clientKey, upstreamKey: upstreamKey,
                clientSideCookie: try SocketCall.cookie(clientSide), upstreamSideCookie: try SocketCall.cookie(upstreamSide),
                clientTracked: false, upstreamTracked: false, maxInFlight: UInt32(clamping: maxInFlight))
        } catch {
            throw .system(error)
        }
        do {
            try lock.withLock { _ throws(BPFError) in
                try targets.update(route.clientSideCookie, UInt64(clientSide), flags: .noExist)
                try targets.update(route.upstreamSideCookie, UInt64(upstreamSide), flags: .noExist)
            }
        } catch {
            release(route)
            throw .sockmap(error)
        }
        refresh(&route, forwardedUp: forwardedUp, forwardedDown: forwardedDown)
        return route
    }

    /// Routes the endpoints of `route` that have become tracked since the last look (an upstream
    /// server's socket may be established a moment after the proxy's connect returns).
    public func refresh(_ route: inout Route, forwardedUp: UInt64, forwardedDown: UInt64) {
        let clientFound = !route.clientTracked && (try? socks.lookup(route.clientKey)) ?? nil != nil
        let upstreamFound = !route.upstreamTracked && (try? socks.lookup(route.upstreamKey)) ?? nil != nil
        guard clientFound || upstreamFound else { return }
        route.clientTracked = route.clientTracked || clientFound
        route.upstreamTracked = route.upstreamTracked || upstreamFound
        // Both values again: each names whether its peer is tracked, which may just have changed.
        if route.clientTracked { write(route, .client, forwarded: forwardedUp) }
        if route.upstreamTracked { write(route, .upstream, forwarded: forwardedDown) }
    }

    /// Tells the kernel that the proxy has written `forwarded` bytes of `sender`'s in total into
    /// the socket facing the other endpoint. Called after writes, while the sender has not yet
    /// switched: one map update (a system call) per call.
    public func publish(_ route: Route, _ sender: Sender, forwarded: UInt64) {
        if sender == .client ? route.clientTracked : route.upstreamTracked { write(route, sender, forwarded: forwarded) }
    }

    private func write(_ route: Route, _ sender: Sender, forwarded: UInt64) {
        let value = switch sender {
        case .client:
            strait_endpoint_route(target_cookie: route.upstreamSideCookie, forwarded: forwarded, peer_key: route.upstreamKey, peer_tracked: route.upstreamTracked ? 1 : 0, max_in_flight: route.maxInFlight)
        case .upstream:
            strait_endpoint_route(target_cookie: route.clientSideCookie, forwarded: forwarded, peer_key: route.clientKey, peer_tracked: route.clientTracked ? 1 : 0, max_in_flight: route.maxInFlight)
        }
        try? routes.update(sender == .client ? route.clientKey : route.upstreamKey, value)
    }

    /// Bytes each endpoint of `route` sent straight into the other's receive queue: they never
    /// cross the proxy's sockets, so TCP's counters there miss them.
    public func ingressBytes(_ route: Route) -> (fromClient: UInt64, fromUpstream: UInt64) {
        let client = route.clientTracked ? ((try? progress.lookup(route.clientKey)) ?? nil)?.ingress ?? 0 : 0
        let upstream = route.upstreamTracked ? ((try? progress.lookup(route.upstreamKey)) ?? nil)?.ingress ?? 0 : 0
        return (client, upstream)
    }

    /// Ends the routes. Sends an endpoint makes afterwards take its own connection (which the
    /// proxy is closing).
    public func release(_ route: Route) {
        lock.withLock { _ in
            _ = try? routes.delete(route.clientKey)
            _ = try? routes.delete(route.upstreamKey)
            // A routed endpoint's progress (its ingress byte count) outlives its socket until here.
            if route.clientTracked { _ = try? progress.delete(route.clientKey) }
            if route.upstreamTracked { _ = try? progress.delete(route.upstreamKey) }
            _ = try? targets.delete(route.clientSideCookie)
            _ = try? targets.delete(route.upstreamSideCookie)
        }
    }

    /// Totals over all CPUs.
    public func counters() -> strait_endpoint_counters {
        (try? stats.summedOverCPUs(0)) ?? strait_endpoint_counters()
    }

    // MARK: Keys

    /// The key the endpoint at the far end of `fd` (a proxy socket) has for its own socket: its
    /// address first, the proxy socket's address second, in the proxy socket's namespace.
    static func remoteEndpointKey(of fd: CInt) throws(ProxyError) -> strait_sock_key {
        let local: SocketAddress, peer: SocketAddress, cookie: UInt64
        do throws(SystemCallError) {
            local = try SocketAddress.local(of: fd)
            peer = try SocketCall.peerAddress(of: fd)  // ENOTCONN from getpeername itself
            cookie = try RelayCall.networkNamespaceCookie(fd)
        } catch {
            throw .system(error)
        }
        guard case .ip(let peerIP, let peerPort) = peer, case .ip(let localIP, let localPort) = local else {
            throw .endpointNotIP(address: "\(peer)")
        }
        var key = strait_sock_key()
        key.netns_cookie = cookie
        withUnsafeMutableBytes(of: &key.local_ip) { $0.copyBytes(from: peerIP.ipv6Mapped) }
        withUnsafeMutableBytes(of: &key.remote_ip) { $0.copyBytes(from: localIP.ipv6Mapped) }
        key.local_port = peerPort
        key.remote_port = localPort
        return key
    }

    static func filterKey(_ address: SocketAddress, role: strait_endpoint_role) -> strait_endpoint_filter_key? {
        guard case .ip(let ip, let port) = address else { return nil }
        var key = strait_endpoint_filter_key()
        if ip.ipv6Mapped.dropFirst(ip.isIPv4 ? 12 : 0).contains(where: { $0 != 0 }) {  // not a wildcard address
            withUnsafeMutableBytes(of: &key.ip) { $0.copyBytes(from: ip.ipv6Mapped) }
        }
        key.port = port
        key.role = UInt16(role.rawValue)
        return key
    }

    static func same(_ a: strait_endpoint_filter_key, _ b: strait_endpoint_filter_key) -> Bool {
        withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in x.elementsEqual(y) } }
    }
}
