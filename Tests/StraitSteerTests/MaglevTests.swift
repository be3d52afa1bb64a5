import StraitKernelABI
import StraitMaglev
import StraitSteer
import Testing

@Suite("Maglev tables and policy spelling (no kernel)")
struct MaglevTests {
    let size = Int(STRAIT_STEER_TABLE_SIZE)

    @Test("equal members get equal shares, within 2%")
    func balance() {
        let table = Maglev.table(members: (0..<8).map { Maglev.Member(id: UInt32($0)) }, size: size)
        #expect(table.count == size)
        let shares = Dictionary(grouping: table, by: { $0 }).mapValues(\.count)
        #expect(shares.count == 8)
        for (_, count) in shares { #expect(abs(Double(count) / (Double(size) / 8) - 1) < 0.02) }
    }

    @Test("one of 8 members leaving moves its entries and almost nothing else")
    func minimalRemap() {
        let before = Maglev.table(members: (0..<8).map { Maglev.Member(id: UInt32($0)) }, size: size)
        let after = Maglev.table(members: (0..<8).filter { $0 != 3 }.map { Maglev.Member(id: UInt32($0)) }, size: size)
        let moved = zip(before, after).filter { $0 != $1 }.count
        let ownedByLeaver = before.filter { $0 == 3 }.count
        #expect(!after.contains(3))
        #expect(Double(moved) / Double(size) < 0.15, "moved \(moved) of \(size); ideal 1/8")
        #expect(moved >= ownedByLeaver)
    }

    @Test("weights set shares in proportion")
    func weights() {
        let weights = [1, 2, 3, 2]
        let table = Maglev.table(members: weights.enumerated().map { Maglev.Member(id: UInt32($0.offset), weight: $0.element) }, size: size)
        let total = Double(weights.reduce(0, +))
        for (id, weight) in weights.enumerated() {
            let share = Double(table.filter { $0 == UInt32(id) }.count) / Double(size)
            #expect(abs(share - Double(weight) / total) < 0.01, "member \(id): \(share)")
        }
    }

    @Test("policies parse from their CLI spelling and print back the same")
    func parsing() {
        for text in ["kernel", "consistent-hash:client", "consistent-hash:4-tuple", "payload:4:8:fallback=2", "payload:0:4:fallback=kernel", "active-backup", "active-active"] {
            #expect(SteeringPolicy(parsing: text)?.description == text)
        }
        #expect(SteeringPolicy(parsing: "consistent-hash") == .consistentHash(.clientAddress))
        for bad in ["", "random", "payload:1", "payload:0:17", "payload:-1:4", "consistent-hash:port", "payload:0:4:fallback=x"] {
            #expect(SteeringPolicy(parsing: bad) == nil, "\(bad)")
        }
    }
}
