/// Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights: a lookup table in which
/// each member owns a share of entries proportional to its weight, built so that removing one of N
/// members moves close to 1/N of the entries and leaves the others where they were.
///
/// Each member walks its own permutation of the table (offset and skip from the hash of its
/// stable id), claiming the next free entry on its turn. Computing a 16381-entry table costs well
/// under a millisecond for 64 members; it runs in Swift and the result is written to the kernel in
/// one map update.
///
/// It lives in its own small target so that every balancer shares one table builder: StraitSteer
/// (SO_REUSEPORT groups) and StraitLB (connect-time load balancing) both import it.
public enum Maglev {
    /// One backend as the table builder sees it: a stable id and a weight. A value, owns nothing.
    public struct Member: Sendable, Hashable {
        /// A stable identity: the same id gives the same permutation, whoever else is present.
        public var id: UInt32
        /// Relative share, at least 1.
        public var weight: Int

        /// A member with `id` and `weight`; weights below 1 are treated as 1 by the table builder.
        public init(id: UInt32, weight: Int = 1) {
            self.id = id
            self.weight = weight
        }
    }

    /// The table: for each entry, the id of the member that owns it. `size` must be prime and
    /// larger than the member count. Empty members: an empty table.
    public static func table(members: [Member], size: Int) -> [UInt32] {
        guard !members.isEmpty else { return [] }
        precondition(size > members.count, "a Maglev table needs more entries than members")
        let members = members.sorted { $0.id < $1.id }
        let maxWeight = members.map { max($0.weight, 1) }.max()!
        let permutations = members.map { member -> (offset: Int, skip: Int) in
            let offset = Int(mix(member.id &* 2_654_435_761 &+ 0x9E37_79B9) % UInt32(size))
            let skip = Int(mix(member.id ^ 0x85EB_CA6B &+ 0x1234_5678) % UInt32(size - 1)) + 1
            return (offset, skip)
        }
        var next = [Int](repeating: 0, count: members.count)
        var credit = [Int](repeating: 0, count: members.count)
        var table = [UInt32](repeating: UInt32.max, count: size)
        var filled = 0
        while filled < size {
            for index in members.indices {
                credit[index] += max(members[index].weight, 1)
                while credit[index] >= maxWeight && filled < size {
                    credit[index] -= maxWeight
                    var entry = (permutations[index].offset + next[index] * permutations[index].skip) % size
                    while table[entry] != UInt32.max {
                        next[index] += 1
                        entry = (permutations[index].offset + next[index] * permutations[index].skip) % size
                    }
                    table[entry] = members[index].id
                    next[index] += 1
                    filled += 1
                }
                if filled == size { break }
            }
        }
        return table
    }

    /// murmur3's 32-bit finaliser: the mixing step of Maglev's permutations and of the hashes the
    /// kernel programs compute (steer.bpf.c, lb.bpf.c), mirrored here bit for bit.
    public static func mix(_ value: UInt32) -> UInt32 {
        var hash = value
        hash ^= hash >> 16
        hash = hash &* 0x85eb_ca6b
        hash ^= hash >> 13
        hash = hash &* 0xc2b2_ae35
        hash ^= hash >> 16
        return hash
    }
}
