import StraitDrop

/// Why a `strait limit` operation was refused or failed. Each description says what to do.
public enum LimitError: Error, CustomStringConvertible {
    case invalidSelector(String)
    /// Nothing is pinned under the directory: no rule exists yet.
    case notLoaded(String)
    /// The rule would pace the SSH session this command runs over below the floor.
    case wouldThrottle(ProtectedSource, rule: String, floor: LimitRate)
    /// The interface's root qdisc was configured by someone; EDT needs fq there.
    case rootQdiscInUse(interface: String, kind: String)
    /// The running kernel was built without the fq qdisc, which holds packets until their departure time.
    case fairQueueUnavailable
    /// `tc` failed or printed what Strait cannot read.
    case trafficControl(String)
    case tooManyRules(Int)

    /// What went wrong and what to do, for the operator; the CLI prints it as is.
    public var description: String {
        switch self {
        case .invalidSelector(let reason):
            "invalid rule: \(reason)"
        case .notLoaded(let directory):
            "strait limit is not loaded (nothing pinned under \(directory)): `strait limit set RATE …` loads it."
        case .wouldThrottle(let source, let rule, let floor):
            "refused: '\(rule)' would limit the connection from \(source) — the session this command runs over (\(source.origin)) — below \(floor). Pass --force if you are sure."
        case .rootQdiscInUse(let interface, let kind):
            "\(interface) has a configured root qdisc (\(kind)); aggregate limits need fq at the root, and strait limit only replaces the kernel's default. Remove it (`tc qdisc del dev \(interface) root`) or install fq yourself, then retry."
        case .fairQueueUnavailable:
            "this kernel has no fq qdisc (CONFIG_NET_SCH_FQ, module sch_fq): aggregate limits need it to hold packets until their departure time. Load sch_fq or use a kernel built with it; per-connection limits work without it."
        case .trafficControl(let message):
            "tc: \(message)"
        case .tooManyRules(let limit):
            "too many rules: strait limit holds at most \(limit) (STRAIT_LIMIT_MAX_RULES)."
        }
    }
}
