import StraitKernelABI
import StraitMaglev

/// The lookup tables lb.bpf.c reads, computed in Swift, and the hash it applies to a socket,
/// mirrored bit for bit so a socket's backend can be predicted (and tested) from its cookie.
public enum LBTable {
    /// Entries of every table (`STRAIT_LB_TABLE_SIZE`, prime).
    public static let size = Int(STRAIT_LB_TABLE_SIZE)

    /// The table entry a socket with this cookie reads under the Maglev policy: both halves of the
    /// cookie through murmur3's finaliser, as `entry_for` in lb.bpf.c.
    public static func entry(cookie: UInt64) -> Int {
        let low = Maglev.mix(UInt32(truncatingIfNeeded: cookie) ^ STRAIT_LB_HASH_SEED)
        return Int(Maglev.mix(low ^ UInt32(truncatingIfNeeded: cookie >> 32)) % UInt32(size))
    }

    /// A table for `members` (backend id and weight) under `policy`; empty without members.
    ///
    /// - Maglev: StraitMaglev's weighted table; a member leaving moves only its own entries.
    /// - Random: each member owns a run of entries in proportion to its weight (largest
    ///   remainders get the entries left over); the program picks an entry at random.
    public static func build(_ members: [Maglev.Member], policy: LBPolicy) -> [UInt32] {
        guard !members.isEmpty else { return [] }
        switch policy {
        case .maglev:
            return Maglev.table(members: members, size: size)
        case .random:
            let members = members.sorted { $0.id < $1.id }
            let total = members.reduce(0) { $0 + max($1.weight, 1) }
            var shares = members.map { max($0.weight, 1) * size / total }
            let remainders = members.indices.sorted { (max(members[$0].weight, 1) * size) % total > (max(members[$1].weight, 1) * size) % total }
            var left = size - shares.reduce(0, +)
            for index in remainders where left > 0 {
                shares[index] += 1
                left -= 1
            }
            return zip(members, shares).flatMap { Array(repeating: $0.id, count: $1) }
        }
    }

    /// The table after members left and none joined (removed, or marked down), under Maglev:
    /// entries whose owner is still live keep it, and only the leavers' entries take their owner
    /// from `fresh` (the table built for the remaining members). A rebuilt Maglev table alone
    /// moves a few more entries than the leavers' (Maglev is near-minimal, not minimal); this
    /// moves exactly those. When members join, the caller builds a fresh table instead.
    public static func shrink(_ previous: [UInt32], fresh: [UInt32], live: Set<UInt32>) -> [UInt32] {
        precondition(previous.count == fresh.count)
        return zip(previous, fresh).map { live.contains($0) ? $0 : $1 }
    }
}
