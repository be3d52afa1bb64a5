import StraitBPF
import StraitKernelABI

/// What `strait drop stats` reports: per-verdict and per-rule counters, summed over CPUs.
public struct DropStats: Sendable, Codable {
    public var pinDirectory: String
    public var mode: DropMode
    public var attachments: [Dropper.Attachment]
    /// One entry per ``DropVerdict``, in its order.
    public var verdicts: [VerdictCount]
    /// Rules of the active set with the frames each matched (dropped in block-list mode, passed in
    /// allow-list mode).
    public var rules: [RuleCount]

    public struct Counter: Sendable, Codable, Equatable {
        public var packets: UInt64
        public var bytes: UInt64
    }

    public struct VerdictCount: Sendable, Codable {
        public var verdict: String
        public var dropped: Bool
        public var packets: UInt64
        public var bytes: UInt64
    }

    public struct RuleCount: Sendable, Codable {
        public var rule: DropRule
        public var packets: UInt64
        public var bytes: UInt64
    }

    /// The counter of `verdict`.
    public func count(_ verdict: DropVerdict) -> Counter {
        let entry = verdicts.first { $0.verdict == verdict.description }
        return Counter(packets: entry?.packets ?? 0, bytes: entry?.bytes ?? 0)
    }

    /// The counter of `rule`, or nil when it is not in the active set.
    public func count(_ rule: DropRule) -> Counter? {
        rules.first { $0.rule == rule }.map { Counter(packets: $0.packets, bytes: $0.bytes) }
    }

    /// Frames dropped for any reason.
    public var droppedPackets: UInt64 { verdicts.filter(\.dropped).reduce(0) { $0 + $1.packets } }
}

extension Dropper {
    /// Reads every counter: one syscall per verdict and two per rule of the active set.
    public func stats() throws -> DropStats {
        let configuration = try currentConfig()
        let verdictCounts = try DropVerdict.allCases.map { verdict in
            let total = strait_drop_counter.sum(try verdicts.perCPUValues(verdict.rawValue))
            return DropStats.VerdictCount(verdict: verdict.description, dropped: verdict.isDrop, packets: total.packets, bytes: total.bytes)
        }
        let ruleCounts = try rulesWithIDs(in: sets[Int(configuration.active_set & 1)]).map { rule, id in
            let total = strait_drop_counter.sum(try ruleHits.perCPUValues(id))
            return DropStats.RuleCount(rule: rule, packets: total.packets, bytes: total.bytes)
        }
        return DropStats(
            pinDirectory: pinDirectory, mode: DropMode(flags: configuration.flagsOfActiveSet),
            attachments: attachments(), verdicts: verdictCounts, rules: ruleCounts)
    }
}
