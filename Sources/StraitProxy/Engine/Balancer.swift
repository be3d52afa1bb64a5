import StraitNet
import Synchronization

/// Picks a healthy upstream for a new connection. Thread-safe: acceptors on every loop call it.
final class Balancer: Sendable {
    let kind: Balancing
    let members: [UpstreamState]
    let weights: [Int]
    /// Smooth weighted round robin's running weights.
    private let current: Mutex<[Int]>
    /// Consistent hashing: sorted (point, member index) pairs, `pointsPerWeight` per unit of weight.
    private let ring: [(point: UInt64, member: Int)]

    static let pointsPerWeight = 160

    init(kind: Balancing, members: [UpstreamState], weights: [Int]) {
        self.kind = kind
        self.members = members
        self.weights = weights
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

    /// The upstream for a client, or nil when none is healthy.
    func pick(clientAddress: SocketAddress?) -> UpstreamState? {
        let healthy = members.indices.filter { members[$0].healthy.load(ordering: .relaxed) }
        guard !healthy.isEmpty else { return nil }
        switch kind {
        case .roundRobin:
            return current.withLock { running in
                var best = healthy[0]
                var total = 0
                for index in healthy {
                    running[index] += weights[index]
                    total += weights[index]
                    if running[index] > running[best] { best = index }
                }
                running[best] -= total
                return members[best]
            }
        case .leastConnections:
            // Fewest active per unit of weight; ties go to the first listed.
            let best = healthy.min { a, b in
                members[a].active.load(ordering: .relaxed) * weights[b] < members[b].active.load(ordering: .relaxed) * weights[a]
            }!
            return members[best]
        case .consistentHash:
            let key: UInt64
            if case .ip(let address, _)? = clientAddress { key = fnv1a(address.bytes) } else { key = 0 }
            // The first point at or after the key whose member is up: a member going down moves
            // only its own clients, to the next member along the ring.
            var low = 0
            var high = ring.count
            while low < high {
                let middle = (low + high) / 2
                if ring[middle].point < key { low = middle + 1 } else { high = middle }
            }
            for step in 0..<ring.count {
                let member = ring[(low + step) % ring.count].member
                if members[member].healthy.load(ordering: .relaxed) { return members[member] }
            }
            return nil
        }
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
