import StraitExposition
import StraitBPF
import StraitKernelABI

/// What `strait drop stats` reports: per-verdict and per-rule counters, summed over CPUs.
public struct DropStats: Sendable, Codable {
    /// The bpffs folder the counters were read from.
    public var pinDirectory: String
    /// The mode of the active rule set.
    public var mode: DropMode
    /// Where the program runs, from the pinned links.
    public var attachments: [Dropper.Attachment]
    /// One entry per ``DropVerdict``, in its order.
    public var verdicts: [VerdictCount]
    /// Rules of the active set with the frames each matched (dropped in block-list mode, passed in
    /// allow-list mode).
    public var rules: [RuleCount]

    /// Frames and their bytes, summed over CPUs.
    public struct Counter: Sendable, Codable, Equatable {
        /// Frames counted.
        public var packets: UInt64
        /// Bytes of those frames, as XDP saw them (from the Ethernet header on).
        public var bytes: UInt64
    }

    /// One verdict's counter, as `stats --json` writes it.
    public struct VerdictCount: Sendable, Codable {
        /// The verdict's name (``DropVerdict/description``).
        public var verdict: String
        /// Whether frames with this verdict were dropped (``DropVerdict/isDrop``).
        public var dropped: Bool
        /// Frames given this verdict since the maps were created.
        public var packets: UInt64
        /// Bytes of those frames.
        public var bytes: UInt64
    }

    /// One rule of the active set and the frames it matched.
    public struct RuleCount: Sendable, Codable {
        /// The rule.
        public var rule: DropRule
        /// Frames it matched since it was added (rule ids are never reused, so it starts from
        /// zero).
        public var packets: UInt64
        /// Bytes of those frames.
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
}

extension Dropper {
    /// Reads every counter: one syscall per verdict and two per rule of the active set.
    public func stats() throws -> DropStats {
        let configuration = try currentConfig()
        let verdictCounts = try DropVerdict.allCases.map { verdict in
            let total = try verdicts.summedOverCPUs(verdict.rawValue)
            return DropStats.VerdictCount(verdict: verdict.description, dropped: verdict.isDrop, packets: total.packets, bytes: total.bytes)
        }
        let ruleCounts = try rulesWithIDs(in: sets[Int(configuration.active_set & 1)]).map { rule, id in
            let total = try ruleHits.summedOverCPUs(id)
            return DropStats.RuleCount(rule: rule, packets: total.packets, bytes: total.bytes)
        }
        return DropStats(
            pinDirectory: pinDirectory, mode: DropMode(flags: configuration.flagsOfActiveSet),
            attachments: attachments(), verdicts: verdictCounts, rules: ruleCounts)
    }
}

extension DropStats {
    /// The counters in the Prometheus text exposition format, e.g. for node_exporter's textfile
    /// collector: `strait_drop_frames_total` and `strait_drop_bytes_total` by verdict, and
    /// `strait_drop_rule_frames_total` / `strait_drop_rule_bytes_total` by rule, for rules that
    /// matched at least once (a rule set of 100,000 prefixes would otherwise be 100,000 series).
    public func prometheusText() -> String {
        var text = PrometheusText()
        let byVerdict = { (verdict: VerdictCount) in [("verdict", verdict.verdict), ("action", verdict.dropped ? "drop" : "pass")] }
        text.counter("strait_drop_frames_total", "Frames seen by strait drop's XDP program, by verdict.", verdicts.map { (byVerdict($0), $0.packets) })
        text.counter("strait_drop_bytes_total", "Bytes of those frames, by verdict.", verdicts.map { (byVerdict($0), $0.bytes) })
        let matched = rules.filter { $0.packets > 0 }
        let byRule = { (rule: RuleCount) in [("rule", rule.rule.description), ("mode", mode.rawValue)] }
        text.counter("strait_drop_rule_frames_total", "Frames each rule matched (rules that matched at least once).", matched.map { (byRule($0), $0.packets) })
        text.counter("strait_drop_rule_bytes_total", "Bytes of the frames each rule matched.", matched.map { (byRule($0), $0.bytes) })
        return text.text
    }
}
