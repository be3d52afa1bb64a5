import StraitNet
import StraitSystem
import Synchronization

/// What decides, beside active health checks, whether new connections may go to one upstream:
/// an operator's drain (`strait proxy drain`), and passive health (outlier ejection) fed by the
/// connect outcomes of real connections. One per ``UpstreamState``, so it survives reloads that
/// keep the address; every loop reads and writes it (atomics, no lock).
///
/// Ejection: ``PassiveHealth/failures`` connect failures in a row eject the upstream for
/// ``PassiveHealth/ejection``; each ejection that follows without a success in between lasts twice
/// the one before, up to 32 times. A success (the relay's ``Balancer/connected(_:)``) resets the
/// run and the back-off. An ejected upstream comes back by itself when its time is up: the next
/// connection to it is the probe.
final class UpstreamAdmission: Sendable {
    /// No new connections (existing ones finish): set and cleared by `strait proxy drain`.
    let draining = Atomic<Bool>(false)
    /// Connect failures since the last success.
    let consecutiveFailures = Atomic<Int>(0)
    /// Monotonic nanoseconds until which the upstream is ejected (0: not ejected).
    let ejectedUntil = Atomic<UInt64>(0)
    /// Ejections in a row without a success: the next one lasts `ejection << min(this, 5)`.
    let ejectionsInARow = Atomic<Int>(0)
    /// Every ejection since the proxy started (`strait_proxy_upstream_ejections_total`).
    let ejections = Atomic<Int>(0)

    /// Whether new connections may go here now (ignoring active health, which the balancer reads
    /// from ``UpstreamState/healthy``).
    func admits(now: UInt64) -> Bool {
        !draining.load(ordering: .relaxed) && ejectedUntil.load(ordering: .relaxed) <= now
    }

    /// Whether it is ejected at `now`.
    func isEjected(now: UInt64) -> Bool { ejectedUntil.load(ordering: .relaxed) > now }

    /// Records a failed connect; returns true when this failure ejected the upstream.
    func failed(policy: PassiveHealth?, now: UInt64) -> Bool {
        let failures = consecutiveFailures.add(1, ordering: .relaxed).newValue
        guard let policy, failures >= policy.failures, !isEjected(now: now) else { return false }
        consecutiveFailures.store(0, ordering: .relaxed)
        let inARow = ejectionsInARow.add(1, ordering: .relaxed).oldValue
        ejectedUntil.store(now &+ policy.ejection.wholeNanoseconds << UInt64(min(inARow, 5)), ordering: .relaxed)
        ejections.add(1, ordering: .relaxed)
        return true
    }

    /// Records a connect that worked: the failure run and the back-off start over.
    func succeeded() {
        consecutiveFailures.store(0, ordering: .relaxed)
        ejectionsInARow.store(0, ordering: .relaxed)
        ejectedUntil.store(0, ordering: .relaxed)
    }
}

/// Picks an upstream for a new connection. Thread-safe: acceptors on every loop call it.
///
/// Candidates are the upstreams that are up (active health), admitted (not drained, not ejected:
/// ``UpstreamAdmission``) and not excluded by the caller; backups are candidates only when no
/// primary is (HAProxy's `backup`). Among them, ``Balancing`` chooses. Each pick is linear in the
/// cluster's size plus, for consistent hashing, a binary search of the ring.
final class Balancer: Sendable {
    let kind: Balancing
    let members: [UpstreamState]
    let weights: [Int]
    /// Per member: used only while no primary is a candidate.
    let backups: [Bool]
    /// Connect failures of real connections eject members (nil: they do not).
    let passiveHealth: PassiveHealth?
    /// How many other members a connection may try after a failed connect.
    let retries: Int
    /// Smooth weighted round robin's running weights.
    private let current: Mutex<[Int]>
    /// Consistent hashing: sorted (point, member index) pairs, `pointsPerWeight` per unit of weight.
    private let ring: [(point: UInt64, member: Int)]

    static let pointsPerWeight = 160

    /// A balancer over `members` (in the order of `cluster.upstreams`, one state per upstream).
    convenience init(cluster: ClusterConfig, members: [UpstreamState]) {
        self.init(
            kind: cluster.balancing, members: members, weights: cluster.upstreams.map(\.weight), backups: cluster.upstreams.map(\.backup),
            passiveHealth: cluster.passiveHealth, retries: cluster.retries)
    }

    init(kind: Balancing, members: [UpstreamState], weights: [Int], backups: [Bool]? = nil, passiveHealth: PassiveHealth? = nil, retries: Int = 0) {
        self.kind = kind
        self.members = members
        self.weights = weights
        self.backups = backups ?? [Bool](repeating: false, count: members.count)
        self.passiveHealth = passiveHealth
        self.retries = retries
        current = Mutex([Int](repeating: 0, count: members.count))
        var ring: [(UInt64, Int)] = []
        if kind == .consistentHash {
            for (index, member) in members.enumerated() {
                for replica in 0..<(weights[index] * Self.pointsPerWeight) {
                    ring.append((fnv1a("\(member.address)#\(replica)".utf8), index))
                }
            }
            ring.sort { $0.0 < $1.0 }
        }
        self.ring = ring
    }

    /// The upstream for a client, or nil when none is a candidate.
    func pick(clientAddress: SocketAddress?) -> UpstreamState? {
        nextUpstream(clientAddress: clientAddress, excluding: [])
    }

    /// The upstream for a client's next connect attempt, never one in `excluding` (the upstreams
    /// this connection already failed to reach), or nil when no candidate is left. The relay calls
    /// it again after a failed connect while ``retries`` allows.
    func nextUpstream(clientAddress: SocketAddress?, excluding: [UpstreamState]) -> UpstreamState? {
        let now = SocketCall.monotonicNanoseconds()
        var candidates = members.indices.filter { index in
            let member = members[index]
            return member.healthy.load(ordering: .relaxed) && member.admission.admits(now: now) && !excluding.contains { $0 === member }
        }
        let primaries = candidates.filter { !backups[$0] }
        if !primaries.isEmpty { candidates = primaries }
        guard !candidates.isEmpty else { return nil }
        switch kind {
        case .roundRobin:
            return current.withLock { running in
                var best = candidates[0]
                var total = 0
                for index in candidates {
                    running[index] += weights[index]
                    total += weights[index]
                    if running[index] > running[best] { best = index }
                }
                running[best] -= total
                return members[best]
            }
        case .leastConnections:
            // Fewest active per unit of weight; ties go to the first listed.
            let best = candidates.min { a, b in
                members[a].active.load(ordering: .relaxed) * weights[b] < members[b].active.load(ordering: .relaxed) * weights[a]
            }!
            return members[best]
        case .consistentHash:
            let key: UInt64
            if case .ip(let address, _)? = clientAddress { key = fnv1a(address.bytes) } else { key = 0 }
            // The first point at or after the key whose member is a candidate: a member going
            // down moves only its own clients, to the next member along the ring.
            var low = 0
            var high = ring.count
            while low < high {
                let middle = (low + high) / 2
                if ring[middle].point < key { low = middle + 1 } else { high = middle }
            }
            let allowed = Set(candidates)
            for step in 0..<ring.count {
                let member = ring[(low + step) % ring.count].member
                if allowed.contains(member) { return members[member] }
            }
            return nil
        }
    }

    /// The relay's hook after a failed connect (refused, reset or timed out) to `upstream`: counts
    /// it towards passive health. Returns true when it ejected the upstream (the caller counts
    /// and logs it).
    @discardableResult
    func connectFailed(_ upstream: UpstreamState) -> Bool {
        upstream.admission.failed(policy: passiveHealth, now: SocketCall.monotonicNanoseconds())
    }

    /// The relay's hook once a connect to `upstream` succeeded: passive health starts over.
    func connected(_ upstream: UpstreamState) {
        upstream.admission.succeeded()
    }
}

/// 64-bit FNV-1a, then a finalizer so nearby inputs spread over the ring.
func fnv1a(_ bytes: some Sequence<UInt8>) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes {
        hash ^= UInt64(byte)
        hash &*= 0x100_0000_01b3
    }
    hash ^= hash >> 33
    hash &*= 0xff51_afd7_ed55_8ccd
    hash ^= hash >> 33
    return hash
}
