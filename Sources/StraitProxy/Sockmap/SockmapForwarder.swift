import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem
import Synchronization

/// The kernel datapath: loads `proxy.bpf.c`, attaches its stream parser and verdict to the
/// `proxy_socks` SOCKHASH, and puts socket pairs into it from userspace by descriptor.
///
/// Nothing is pinned and no cgroup is involved: the maps and links live as long as this object
/// (one per proxy process). Closing a socket removes it from both hashes; ``release(_:)`` removes
/// the pair entries.
///
/// **Early bytes.** A socket's bytes that arrived before it joined the map (a client that writes
/// right after connect, or before `accept` returned) sit in its TCP receive queue, and the
/// strparser only looks there on the next data-ready callback, which may never come. ``join(_:_:)``
/// raises that callback itself right after insertion (`SO_RCVLOWAT`, whose setter calls
/// `tcp_data_ready`), so queued bytes go through the verdict first, in order, and nothing is left
/// behind or read twice. Bytes userspace already read (a ``Relay`` on copy or splice before an
/// `auto` switch) are written to the peer before the pair joins, so order holds there too.
public final class SockmapForwarder: @unchecked Sendable {
    private let object: BPFObject
    private let socks: TypedMap<UInt64, UInt64>
    private let targets: TypedMap<UInt64, UInt64>
    private let pairs: TypedMap<UInt64, strait_proxy_pair>
    private let stats: TypedMap<UInt32, strait_proxy_counters>
    private let links: [BPFLink]
    /// Map updates come from several loops; a pair's entries go in together.
    private let lock = Mutex<Void>(())

    /// Loads and attaches the programs. Throws ``BPFError`` when the process lacks `CAP_BPF` and
    /// `CAP_NET_ADMIN` or the kernel lacks SOCKHASH stream verdicts; the proxy then runs on copy
    /// and splice only.
    public init() throws(BPFError) {
        object = try BPFObjectSpec(embedded: .proxy).load()
        do throws(BPFError) {
            let socksMap = try object.map("proxy_socks")
            socks = try socksMap.typed(key: UInt64.self, value: UInt64.self)
            targets = try object.map("proxy_targets").typed(key: UInt64.self, value: UInt64.self)
            pairs = try object.map("proxy_pairs").typed(key: UInt64.self, value: strait_proxy_pair.self)
            stats = try object.map("proxy_stats").typed(key: UInt32.self, value: strait_proxy_counters.self)
            let parser = try object.program("strait_proxy_parser").attach(sockmap: socksMap, as: .streamParser)
            do throws(BPFError) {
                let verdict = try object.program("strait_proxy_verdict").attach(sockmap: socksMap, as: .streamVerdict)
                links = [parser, verdict]
            } catch {
                try? parser.close()
                throw error
            }
        } catch {
            object.close()
            throw error
        }
    }

    deinit {
        for link in links { try? link.close() }
        object.close()
    }

    /// Two sockets forwarded to each other in the kernel.
    public struct Pair: Sendable {
        /// The first socket's descriptor as given to ``SockmapForwarder/join(_:_:maxInFlight:)``: still
        /// owned and closed by the caller; the pair only names it.
        public let first: CInt
        /// The second socket's descriptor, owned by the caller like ``first``.
        public let second: CInt
        /// `SO_COOKIE` of ``first``: its key in the forwarder's maps, unique for the socket's life (a
        /// reused descriptor number gets a new cookie).
        public let firstCookie: UInt64
        /// `SO_COOKIE` of ``second``, its key in the maps.
        public let secondCookie: UInt64
    }

    /// Puts `first` and `second` (connected TCP sockets, owned by the caller) into the maps so that
    /// each one's received bytes go to the other's egress, including bytes already queued.
    /// Userspace must not splice these sockets afterwards (a socket with a psock has no
    /// `splice_read`), and reads them only once a direction is ``DirectionState/throttled``: then
    /// the verdict passes that direction's bytes to the source's own receive queue, after at most
    /// `maxInFlight` bytes waiting for the peer's send buffer (0: no limit; see
    /// `struct strait_proxy_pair`).
    public func join(_ first: CInt, _ second: CInt, maxInFlight: Int) throws(ProxyError) -> Pair {
        let budget = UInt32(clamping: maxInFlight)
        let pair: Pair
        do {
            pair = Pair(first: first, second: second, firstCookie: try SocketCall.cookie(first), secondCookie: try SocketCall.cookie(second))
        } catch {
            throw .system(error)
        }
        do {
            try lock.withLock { _ throws(BPFError) in
                var toSecond = strait_proxy_pair()
                toSecond.peer_cookie = pair.secondCookie
                toSecond.max_in_flight = budget
                var toFirst = toSecond
                toFirst.peer_cookie = pair.firstCookie
                try pairs.update(pair.firstCookie, toSecond)
                try pairs.update(pair.secondCookie, toFirst)
                // Targets first (no programs): each socket is a valid redirect target before either
                // one can run a verdict.
                try targets.update(pair.firstCookie, UInt64(first), flags: .noExist)
                try targets.update(pair.secondCookie, UInt64(second), flags: .noExist)
                try socks.update(pair.firstCookie, UInt64(first), flags: .noExist)
                try socks.update(pair.secondCookie, UInt64(second), flags: .noExist)
            }
        } catch {
            release(pair)
            throw .sockmap(error)
        }
        // Bytes queued before the insert: have the strparser look at them now.
        do {
            try RelayCall.setReceiveLowWatermark(first, 1)
            try RelayCall.setReceiveLowWatermark(second, 1)
        } catch {
            release(pair)
            throw .system(error)
        }
        return pair
    }

    /// One direction of a pair as the verdict left it: bytes out of one socket.
    public struct DirectionState: Sendable, Equatable {
        /// Bytes redirected to the peer's egress.
        public var redirected: UInt64 = 0
        /// Bytes passed to the source's own receive queue since the direction was throttled
        /// (userspace reads and copies them).
        public var passed: UInt64 = 0
        /// The direction went over its in-flight budget: every later byte is passed.
        public var throttled = false
    }

    /// Each direction's state: out of `first`, out of `second`.
    public func state(_ pair: Pair) -> (fromFirst: DirectionState, fromSecond: DirectionState) {
        func read(_ cookie: UInt64) -> DirectionState {
            guard let value = (try? pairs.lookup(cookie)) ?? nil else { return DirectionState() }
            return DirectionState(redirected: value.bytes, passed: value.passed, throttled: value.throttled != 0)
        }
        return (read(pair.firstCookie), read(pair.secondCookie))
    }

    /// Bytes the verdict redirected out of each socket of the pair so far.
    public func redirectedBytes(_ pair: Pair) -> (fromFirst: UInt64, fromSecond: UInt64) {
        let both = state(pair)
        return (both.fromFirst.redirected, both.fromSecond.redirected)
    }

    /// Removes the pair from the maps (closing the sockets also takes them out of the hashes).
    public func release(_ pair: Pair) {
        lock.withLock { _ in
            _ = try? socks.delete(pair.firstCookie)
            _ = try? socks.delete(pair.secondCookie)
            _ = try? targets.delete(pair.firstCookie)
            _ = try? targets.delete(pair.secondCookie)
            _ = try? pairs.delete(pair.firstCookie)
            _ = try? pairs.delete(pair.secondCookie)
        }
    }

    /// Totals over all CPUs.
    public func counters() -> strait_proxy_counters {
        (try? stats.summedOverCPUs(0)) ?? strait_proxy_counters()
    }
}
