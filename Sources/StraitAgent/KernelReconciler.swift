import Foundation
import StraitAccel
import StraitBPF
import StraitDrop
import StraitLB
import StraitSystem

/// Where the agent keeps what outlives it: the bpffs pins of each part and the record of what it made.
public struct AgentPaths: Sendable, Equatable {
    /// The pin root: accel pins under `<root>/accel`, drop pins under `<root>/drop`. The default is
    /// the one the one-shot commands use, so `strait accel status` and `strait drop list` show what
    /// the agent holds.
    public var pinRoot: String
    /// The JSON record of what the agent made (``AgentState``). Under /run, like bpffs it is gone
    /// after a reboot, and the agent re-applies its file from nothing.
    public var stateFile: String

    /// `/sys/fs/bpf/strait`, the one-shot commands' root.
    public static let defaultPinRoot = BPFFS.defaultMount + "/strait"
    /// `/run/strait/agent-state.json`.
    public static let defaultStateFile = "/run/strait/agent-state.json"

    /// The installed paths by default; tests pass private ones.
    public init(pinRoot: String = AgentPaths.defaultPinRoot, stateFile: String = AgentPaths.defaultStateFile) {
        self.pinRoot = pinRoot
        self.stateFile = stateFile
    }

    /// accel's pins (what `strait accel --pin-directory` takes).
    public var accelDirectory: String { pinRoot + "/accel" }
    /// drop's pins.
    public var dropDirectory: String { pinRoot + "/drop" }
    /// lb's pins (every map, and the links), what `strait lb status --pin-directory` takes.
    public var lbDirectory: String { pinRoot + "/lb" }
    /// lb's state (`state.json` for `strait lb status`, `tables.json` for adoption), beside the
    /// state file: `/run/strait/lb` by default, `strait lb status`'s default too.
    public var lbStateDirectory: String { (stateFile as NSString).deletingLastPathComponent + "/lb" }
    /// Where the agent's persistent lb lives.
    public var lbPersistence: LBPersistence { LBDaemon.persistence(stateDirectory: lbStateDirectory, pinDirectory: lbDirectory) }
}

/// What the agent made, so that it removes only its own: a part the file no longer names is torn
/// down only if the agent set it up (hand-made `strait accel enable` state is left alone), and
/// `strait agent cleanup` knows what to remove. Pins do not record a network namespace, so the
/// namespace of each drop attachment is kept here.
public struct AgentState: Codable, Sendable, Equatable {
    /// The cgroup the agent enabled acceleration on; nil: the agent holds no accel state.
    public var accelCgroup: String?
    /// The drop attachments the agent made; nil: the agent holds no drop state.
    public var dropInterfaces: [DropInterface]?
    /// The cgroup the agent's lb balances; nil: the agent holds no lb state.
    public var lbCgroup: String?

    /// An empty record: the agent made nothing.
    public init(accelCgroup: String? = nil, dropInterfaces: [DropInterface]? = nil, lbCgroup: String? = nil) {
        self.accelCgroup = accelCgroup
        self.dropInterfaces = dropInterfaces
        self.lbCgroup = lbCgroup
    }

    /// The record at `path`; empty when there is none (first start, after a reboot).
    public static func read(_ path: String) -> AgentState {
        guard let data = FileManager.default.contents(atPath: path), let state = try? JSONDecoder().decode(AgentState.self, from: data) else {
            return AgentState()
        }
        return state
    }

    /// Writes the record atomically (a rename), making its folder if needed.
    public func write(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

/// What one reconcile did to one part.
public struct PartChange: Sendable, Equatable, CustomStringConvertible {
    /// The kind of change, as `strait_agent_reconciles_total{action}` counts it.
    public enum Action: String, Sendable {
        /// The kernel already matched: pins adopted as they were, nothing written.
        case unchanged
        /// Made from nothing.
        case created
        /// Changed in place (only what differed).
        case updated
        /// Removed: the file no longer names it.
        case removed
        /// Could not be brought to the file; the error says why.
        case failed
    }

    /// `accel`, `drop`, `proxy` or `lb`.
    public var part: String
    /// What was done.
    public var action: Action
    /// What changed, or why it failed.
    public var detail: String

    /// A change with an optional detail.
    public init(part: String, action: Action, detail: String = "") {
        self.part = part
        self.action = action
        self.detail = detail
    }

    /// `part: action (detail)`, as logged.
    public var description: String { "\(part): \(action.rawValue)" + (detail.isEmpty ? "" : " (\(detail))") }
}

/// Brings the pinned accel and drop state to a file's sections, touching only what differs, and
/// tells whether the kernel matches. Stateless apart from ``AgentState``, which the caller keeps.
///
/// Adoption is what keeps an agent restart invisible: pins that already match are opened and
/// left as they are, so no link is replaced (no accelerated socket leaves the hash) and no rule
/// map is rewritten (no packet sees a gap, counters keep counting).
public struct KernelReconciler: Sendable {
    /// Where the pins are.
    public let paths: AgentPaths

    /// A reconciler over `paths`; it holds no descriptor between calls.
    public init(paths: AgentPaths) { self.paths = paths }

    // MARK: accel

    /// Enables, updates, moves or removes acceleration. A cgroup change disables first: sockets of
    /// the old cgroup go back to the stack at their next send (no byte lost), then the new one is enabled.
    public func reconcileAccel(_ wanted: AccelSection?, state: inout AgentState) -> PartChange {
        let directory = paths.accelDirectory
        do {
            guard let wanted else {
                guard state.accelCgroup != nil else { return PartChange(part: "accel", action: .unchanged, detail: "not configured") }
                if BPFFS.exists(directory) { try Accelerator.disable(pinDirectory: directory) }
                state.accelCgroup = nil
                return PartChange(part: "accel", action: .removed)
            }
            let cgroup = Cgroup(path: wanted.cgroup)
            guard cgroup.exists else {
                return PartChange(part: "accel", action: .failed, detail: "cgroup \(wanted.cgroup) does not exist (a cgroup v2 directory is needed)")
            }
            var action = PartChange.Action.created
            var detail = "on \(wanted.cgroup)"
            if Accelerator.isEnabled(pinDirectory: directory) {
                if let current = try? Accelerator.open(pinDirectory: directory), let currentCgroup = try? current.cgroup()?.path, currentCgroup == wanted.cgroup {
                    if (try? current.policy()) == wanted.policy {
                        state.accelCgroup = wanted.cgroup
                        return PartChange(part: "accel", action: .unchanged, detail: "adopted on \(wanted.cgroup)")
                    }
                    try current.setPolicy(wanted.policy)
                    state.accelCgroup = wanted.cgroup
                    return PartChange(part: "accel", action: .updated, detail: "policy")
                }
                // Another cgroup, or pins of another layout: start over.
                try Accelerator.disable(pinDirectory: directory)
                action = .updated
                detail = "moved to \(wanted.cgroup)"
            }
            _ = try Accelerator.enable(cgroup: cgroup, policy: wanted.policy, pinDirectory: directory)
            state.accelCgroup = wanted.cgroup
            return PartChange(part: "accel", action: action, detail: detail)
        } catch {
            return PartChange(part: "accel", action: .failed, detail: "\(error)")
        }
    }

    /// How the pinned accel state differs from `wanted` (empty: it matches).
    public func accelDifferences(_ wanted: AccelSection?, state: AgentState) -> [String] {
        let directory = paths.accelDirectory
        guard let wanted else {
            return state.accelCgroup != nil && Accelerator.isEnabled(pinDirectory: directory) ? ["accel: enabled, but the file has no accel section"] : []
        }
        guard Accelerator.isEnabled(pinDirectory: directory), let accelerator = try? Accelerator.open(pinDirectory: directory) else {
            return ["accel: not enabled"]
        }
        var differences: [String] = []
        let cgroup = try? accelerator.cgroup()?.path
        if cgroup != wanted.cgroup { differences.append("accel: attached to \(cgroup ?? "an unknown cgroup"), not \(wanted.cgroup)") }
        if (try? accelerator.policy()) != wanted.policy { differences.append("accel: the policy differs from the file") }
        return differences
    }

    // MARK: drop

    /// Loads the rules first (so a new interface never sees an incomplete set), then attaches new
    /// interfaces, re-attaches ones whose mode or namespace changed, and detaches ones the file
    /// dropped. An unchanged rule set is not written; a changed one is swapped in at once
    /// (``Dropper/load(_:protecting:)``: rules that stay keep their counters).
    public func reconcileDrop(_ wanted: DropSection?, state: inout AgentState) -> PartChange {
        let directory = paths.dropDirectory
        do {
            guard let wanted else {
                guard state.dropInterfaces != nil else { return PartChange(part: "drop", action: .unchanged, detail: "not configured") }
                try Dropper.removeAll(pinDirectory: directory)
                state.dropInterfaces = nil
                return PartChange(part: "drop", action: .removed)
            }
            let existed = Dropper.isLoaded(pinDirectory: directory)
            let dropper = try Dropper.open(pinDirectory: directory, create: true)
            // Owned from here (cleanup removes it), even if what follows fails.
            let recorded = state.dropInterfaces ?? []
            state.dropInterfaces = recorded
            var changes: [String] = []
            let current = try dropper.ruleSet()
            if current.mode != wanted.rules.mode || Set(current.rules) != Set(wanted.rules.rules) {
                let protecting = wanted.protect.map { ProtectedSource(address: $0, tcpPort: nil, origin: "the agent file's `protect`") }
                try dropper.load(wanted.rules, protecting: protecting)
                let added = Set(wanted.rules.rules).subtracting(current.rules).count
                let removed = Set(current.rules).subtracting(wanted.rules.rules).count
                changes.append("rules +\(added) -\(removed)" + (current.mode != wanted.rules.mode ? ", \(wanted.rules.mode)-list mode" : ""))
            }
            var made: [DropInterface] = []
            for interface in wanted.interfaces {
                let attached = dropper.attachments().first { $0.interface == interface.name }
                let recordedNetns = recorded.first { $0.name == interface.name }?.netns
                if let attached {
                    if attached.mode == interface.mode && attached.live && recordedNetns == interface.netns {
                        made.append(interface)
                        continue
                    }
                    try dropper.detach(interface: interface.name, removingWhenLast: false)
                }
                let (name, mode) = (interface.name, interface.mode)
                if let netns = interface.netns {
                    try NetworkNamespace(name: netns).run { try dropper.attach(interface: name, mode: mode) }
                } else {
                    try dropper.attach(interface: name, mode: mode)
                }
                made.append(interface)
                // Recorded as it goes, so a failure half-way leaves a true record of the namespaces.
                state.dropInterfaces = made + recorded.filter { old in !made.contains { $0.name == old.name } }
                changes.append((attached == nil ? "attached " : "re-attached ") + Self.describe(interface))
            }
            for attachment in dropper.attachments() where !wanted.interfaces.contains(where: { $0.name == attachment.interface }) {
                try dropper.detach(interface: attachment.interface, removingWhenLast: false)
                changes.append("detached \(attachment.interface)")
            }
            state.dropInterfaces = made
            if changes.isEmpty { return PartChange(part: "drop", action: .unchanged, detail: "adopted") }
            return PartChange(part: "drop", action: existed ? .updated : .created, detail: changes.joined(separator: ", "))
        } catch {
            return PartChange(part: "drop", action: .failed, detail: "\(error)")
        }
    }

    /// How the pinned drop state differs from `wanted` (empty: it matches). Reads the whole active
    /// rule set: two map syscalls per rule.
    public func dropDifferences(_ wanted: DropSection?, state: AgentState) -> [String] {
        let directory = paths.dropDirectory
        guard let wanted else {
            return state.dropInterfaces != nil && Dropper.isLoaded(pinDirectory: directory) ? ["drop: loaded, but the file has no drop section"] : []
        }
        guard Dropper.isLoaded(pinDirectory: directory), let dropper = try? Dropper.open(pinDirectory: directory) else { return ["drop: not loaded"] }
        var differences: [String] = []
        if let current = try? dropper.ruleSet() {
            if current.mode != wanted.rules.mode { differences.append("drop: \(current.mode)-list mode, not \(wanted.rules.mode)") }
            if Set(current.rules) != Set(wanted.rules.rules) { differences.append("drop: the rules differ from the file") }
        } else {
            differences.append("drop: cannot read the rules")
        }
        let attachments = dropper.attachments()
        for interface in wanted.interfaces {
            guard let attached = attachments.first(where: { $0.interface == interface.name }) else {
                differences.append("drop: not attached to \(Self.describe(interface))")
                continue
            }
            if attached.mode != interface.mode { differences.append("drop: \(interface.name) in \(attached.mode) mode, not \(interface.mode)") }
            if !attached.live { differences.append("drop: \(interface.name) has gone (its link is defunct)") }
            if state.dropInterfaces?.first(where: { $0.name == interface.name })?.netns != interface.netns {
                differences.append("drop: \(interface.name) was attached in another namespace")
            }
        }
        for attachment in attachments where !wanted.interfaces.contains(where: { $0.name == attachment.interface }) {
            differences.append("drop: attached to \(attachment.interface), which the file does not name")
        }
        return differences
    }

    static func describe(_ interface: DropInterface) -> String {
        let namespace = interface.netns.map { ", netns \($0)" } ?? ""
        return "\(interface.name) (\(interface.mode)\(namespace))"
    }

    // MARK: cleanup

    /// Detaches and unpins everything `state` says the agent made, then removes the pin root when
    /// empty and the state file. Returns what was removed.
    public func cleanup(state: AgentState) throws -> [String] {
        var removed: [String] = []
        if state.accelCgroup != nil {
            if BPFFS.exists(paths.accelDirectory) { try Accelerator.disable(pinDirectory: paths.accelDirectory) }
            removed.append("accel (cgroup \(state.accelCgroup ?? "?"))")
        }
        if let interfaces = state.dropInterfaces {
            try Dropper.removeAll(pinDirectory: paths.dropDirectory)
            removed.append("drop (" + (interfaces.isEmpty ? "no interface" : interfaces.map(Self.describe).joined(separator: ", ")) + ")")
        }
        if let cgroup = state.lbCgroup {
            try paths.lbPersistence.remove()
            try? FileManager.default.removeItem(atPath: paths.lbStateDirectory)
            removed.append("lb (cgroup \(cgroup))")
        }
        try? FileCall.removeDirectory(paths.pinRoot)  // only when empty: hand-made pins of other parts stay
        try? FileManager.default.removeItem(atPath: paths.stateFile)
        return removed
    }
}
