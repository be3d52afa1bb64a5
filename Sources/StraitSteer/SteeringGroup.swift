import CLibBPF
import Foundation
import StraitBPF
import StraitKernelABI
import StraitMaglev
import StraitNet
import StraitSystem
import Synchronization

/// Steers one `SO_REUSEPORT` group (TCP listeners or UDP sockets on one address) with a
/// ``SteeringPolicy``: loads steer.bpf.c, keeps the members in its socket array, computes the Maglev
/// table or the order in Swift and writes it to the kernel, and attaches the program to the group.
///
/// Membership changes while traffic flows: a joining socket is put in the socket array before the
/// table names it; a leaving one is taken out of the table first (its keys move to the others, about
/// 1/N of them) and out of the array after. A member that closes without leaving is emptied from the
/// array by the kernel, and its keys go to the kernel's hash over live members until the table is
/// rebuilt: nothing is ever steered to a closed socket.
///
/// The program is loaded migrate-aware (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`) unless told otherwise:
/// with `net.ipv4.tcp_migrate_req=1` in the namespace, connections queued on a listener that closes
/// move to a live member the policy picks instead of being reset.
///
/// Owns its BPF program and maps; ``close()`` detaches the program from the group (while a member
/// is still open) and releases them. The `.kernel` policy loads nothing. Thread-safe.
public final class SteeringGroup: SocketSteering, @unchecked Sendable {
    /// How the program picks a member; fixed for the life of the group (changing it means a new
    /// group).
    public let policy: SteeringPolicy
    /// Whether the program places connections migrated off a closing listener.
    public let migrates: Bool
    private let program: BPFProgram?
    private let sockets: ReuseportSocketArray?
    private let config: TypedMap<UInt32, strait_steer_config>?
    private let table: BPFMap?
    private let counterMap: TypedMap<UInt32, strait_steer_counters>?
    private let state = Mutex<State>(State())

    struct State {
        var members: [Member] = []
        var attachment: ReuseportAttachment?
        var joined = 0
    }

    /// One member: its socket (by cookie), its slot in the socket array, weight and joining order.
    public struct Member: Sendable, Hashable {
        /// The socket's cookie (`SO_COOKIE`): identifies the listener in the kernel even after its
        /// fd number is reused.
        public var cookie: UInt64
        /// Its index in the `REUSEPORT_SOCKARRAY` map, and the id the Maglev table is built over.
        public var slot: UInt32
        /// Relative share under weighted policies, at least 1.
        public var weight: Int
        /// Joining order (0: the first member ever joined); active-backup and the payload fallback
        /// name members by it.
        public var position: Int
    }

    /// Loads the program for `policy`. `migrate: false` loads the select-only variant (for comparison).
    public init(policy: SteeringPolicy, migrate: Bool = true) throws {
        self.policy = policy
        self.migrates = migrate && policy != .kernel
        guard policy != .kernel else {
            program = nil; sockets = nil; config = nil; table = nil; counterMap = nil
            return
        }
        let spec = try BPFObjectSpec(embedded: .steer)
        try spec.setAutoload(!migrate, forProgram: "steer_select")
        try spec.setAutoload(migrate, forProgram: "steer_select_or_migrate")
        if migrate { try spec.setExpectedAttachType(BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, forProgram: "steer_select_or_migrate") }
        let object = try spec.load()
        defer { object.close() }
        program = try object.program(migrate ? "steer_select_or_migrate" : "steer_select")
        sockets = try ReuseportSocketArray(object.map("steer_sockets"))
        config = try object.map("steer_config").typed(key: UInt32.self, value: strait_steer_config.self)
        table = try object.map("steer_table")
        counterMap = try object.map("steer_counters").typed(key: UInt32.self, value: strait_steer_counters.self)
        try publish(members: [])
    }

    /// Takes over a group another process steered, from the descriptors and note of its
    /// ``handOverPackage()`` (received as ``ListenerHandOver`` extras). The program stays attached
    /// throughout; this process now owns the maps and manages membership. `attachedThrough` is any
    /// listener of the group received in the same hand-over, to detach through later.
    public init(adopting descriptors: [CInt], note: String, attachedThrough socketFD: CInt?) throws {
        guard let parsed = HandOverNote(note), descriptors.count == (parsed.policy == .kernel ? 0 : 5) else {
            descriptors.forEach(closeDescriptor)
            throw BPFError.unsupported("not a StraitSteer hand-over (\(descriptors.count) descriptors, note '\(note.prefix(80))')")
        }
        policy = parsed.policy
        migrates = parsed.migrates
        guard policy != .kernel else {
            program = nil; sockets = nil; config = nil; table = nil; counterMap = nil
            return
        }
        var owned = descriptors
        func take() -> CInt { owned.removeFirst() }
        do {
            program = try BPFProgram.adopt(
                descriptor: take(), name: parsed.migrates ? "steer_select_or_migrate" : "steer_select",
                expectedAttachType: parsed.migrates ? BPF_SK_REUSEPORT_SELECT_OR_MIGRATE : BPF_SK_REUSEPORT_SELECT)
            sockets = try ReuseportSocketArray(BPFMap.adopt(descriptor: take()))
            config = try BPFMap.adopt(descriptor: take()).typed(key: UInt32.self, value: strait_steer_config.self)
            table = try BPFMap.adopt(descriptor: take())
            counterMap = try BPFMap.adopt(descriptor: take()).typed(key: UInt32.self, value: strait_steer_counters.self)
        } catch {
            owned.forEach(closeDescriptor)
            throw error
        }
        let attachment = try socketFD.map { fd throws in try ReuseportAttachment.existing(program: program!, attachedThrough: fd) }
        state.withLock { state in
            state.members = parsed.members
            state.joined = (parsed.members.map(\.position).max() ?? -1) + 1
            state.attachment = attachment
        }
    }

    /// Duplicates of the program's and maps' descriptors (the caller sends them, then closes them)
    /// and a note naming the policy and members, for ``ListenerHandOver`` extras. Empty for `.kernel`.
    public func handOverPackage() throws -> (descriptors: [CInt], note: String) {
        let note = HandOverNote(policy: policy, migrates: migrates, members: members).text
        guard let program, let sockets, let config, let table, let counterMap else { return ([], note) }
        var descriptors: [CInt] = []
        do {
            for duplicate in [program.duplicateDescriptor, sockets.map.duplicateDescriptor, config.map.duplicateDescriptor,
                              table.duplicateDescriptor, counterMap.map.duplicateDescriptor] {
                descriptors.append(try duplicate())
            }
        } catch {
            descriptors.forEach(closeDescriptor)
            throw error
        }
        return (descriptors, note)
    }

    deinit { close() }

    /// The current members, in joining order.
    public var members: [Member] { state.withLock { $0.members } }

    /// The kernel's id of the steering program (as `bpftool prog show` lists it); nil for `.kernel`.
    public var programID: UInt32? { program?.id }

    /// Puts the socket open at `fd` (bound with `SO_REUSEPORT`; listening, for TCP) in the group's
    /// steering; the first member also attaches the program to the group. Cost: two to three bpf(2)
    /// calls and, for table policies, a table rebuild (~1 ms) written in one update.
    public func memberJoined(_ fd: CInt, weight: Int = 1) throws {
        guard let sockets, let program else { return }
        let cookie = try SocketCall.cookie(fd)
        try state.withLock { state throws in
            guard !state.members.contains(where: { $0.cookie == cookie }) else { return }
            let used = Set(state.members.map(\.slot))
            guard let slot = (0..<UInt32(STRAIT_STEER_MAX_MEMBERS)).first(where: { !used.contains($0) }) else {
                throw BPFError.unsupported("a steering group holds at most \(STRAIT_STEER_MAX_MEMBERS) members")
            }
            try sockets.setSocket(fd, at: slot)
            let member = Member(cookie: cookie, slot: slot, weight: max(weight, 1), position: state.joined)
            do {
                try publish(members: state.members + [member])
                if state.attachment == nil { state.attachment = try program.attach(reuseportGroupOf: fd) }
            } catch {
                try? publish(members: state.members)
                _ = try? sockets.removeSocket(at: slot)
                throw error
            }
            state.joined += 1
            state.members.append(member)
        }
    }

    /// Stops steering to the socket open at `fd`: the table or order is rewritten without it, then it
    /// leaves the socket array. Its keys move to the remaining members; nothing else moves.
    public func memberLeaving(_ fd: CInt) throws {
        guard sockets != nil else { return }
        try leave(cookie: try SocketCall.cookie(fd))
    }

    /// Like ``memberLeaving(_:)``, for a member known by its cookie (its socket may be closed already).
    public func leave(cookie: UInt64) throws {
        guard let sockets else { return }
        try state.withLock { state throws in
            guard let index = state.members.firstIndex(where: { $0.cookie == cookie }) else { return }
            let member = state.members[index]
            var remaining = state.members
            remaining.remove(at: index)
            try publish(members: remaining)
            state.members = remaining
            if try sockets.socketCookie(at: member.slot) == cookie { try sockets.removeSocket(at: member.slot) }
        }
    }

    /// Which member the policy picks for a key's bytes (as ``SteeringHash/key(_:source:sourcePort:destination:destinationPort:)``
    /// builds them, or a payload key), from the table as last written; nil for non-table policies.
    /// Reads the whole 64 KiB table from the kernel: for tests and diagnostics, not per packet.
    public func member(forKey bytes: [UInt8]) -> Member? {
        guard usesTable, let table, let raw = try? table.bytes(at: 0) else { return nil }
        let bucket = SteeringHash.bucket(bytes)
        let slot = raw.withUnsafeBytes { $0.load(fromByteOffset: bucket * 4, as: UInt32.self) }
        return members.first { $0.slot == slot }
    }

    /// Counters summed over CPUs.
    public func counters() throws -> SteeringCounters {
        guard let counterMap else { return SteeringCounters() }
        return try counterMap.perCPUValues(0).reduce(into: SteeringCounters()) { total, cpu in
            total.selected += Int(cpu.selected)
            total.unavailable += Int(cpu.unavailable)
            total.shortPayload += Int(cpu.short_payload)
            total.migrated += Int(cpu.migrated)
        }
    }

    /// Detaches the program from the group through a member still open (if any) and releases the
    /// program and maps. The sockets stay open and in their group, now on the kernel's hash.
    public func close() {
        let attachment = state.withLock { state in defer { state.attachment = nil }; return state.attachment }
        try? attachment?.close()
    }

    private var usesTable: Bool {
        switch policy {
        case .consistentHash, .payload, .activeActive: true
        case .kernel, .activeBackup: false
        }
    }

    /// Writes the table (table policies) or the order (active-backup) and the configuration for
    /// `members`. The table goes first, so the configuration never points at a stale layout.
    private func publish(members: [Member]) throws {
        guard let config, let table else { return }
        var settings = strait_steer_config()
        settings.fallback_slot = STRAIT_STEER_NO_SLOT
        switch policy {
        case .kernel:
            return
        case .consistentHash(let key):
            settings.mode = UInt32(STRAIT_STEER_MODE_TABLE.rawValue)
            settings.key = UInt32(key == .clientAddress ? STRAIT_STEER_KEY_CLIENT_ADDRESS.rawValue : STRAIT_STEER_KEY_FOUR_TUPLE.rawValue)
        case .payload(let offset, let length, let fallback):
            settings.mode = UInt32(STRAIT_STEER_MODE_TABLE.rawValue)
            settings.key = UInt32(STRAIT_STEER_KEY_PAYLOAD.rawValue)
            settings.payload_offset = UInt32(offset)
            settings.payload_length = UInt32(length)
            if case .member(let position) = fallback, let member = members.first(where: { $0.position == position }) {
                settings.fallback_slot = member.slot
            }
        case .activeActive:
            settings.mode = UInt32(STRAIT_STEER_MODE_TABLE.rawValue)
            settings.key = UInt32(STRAIT_STEER_KEY_FOUR_TUPLE.rawValue)
        case .activeBackup:
            settings.mode = UInt32(STRAIT_STEER_MODE_ORDERED.rawValue)
            let order = members.sorted { $0.position < $1.position }.map(\.slot)
            settings.order_count = UInt32(order.count)
            withUnsafeMutableBytes(of: &settings.order) { bytes in
                for (index, slot) in order.enumerated() { bytes.storeBytes(of: slot, toByteOffset: index * 4, as: UInt32.self) }
            }
        }
        if usesTable {
            let weighted = policy == .activeActive
            let entries = Maglev.table(
                members: members.map { Maglev.Member(id: $0.slot, weight: weighted ? $0.weight : 1) },
                size: Int(STRAIT_STEER_TABLE_SIZE))
            // An empty group: every bucket names slot 0, which is empty, so the kernel's hash decides.
            let filled = entries.isEmpty ? [UInt32](repeating: 0, count: Int(STRAIT_STEER_TABLE_SIZE)) : entries
            try filled.withUnsafeBytes { bytes throws in try table.update(index: 0, bytes: bytes) }
        }
        try config.update(0, settings)
    }
}

/// The text that travels with a steering group's descriptors in a hand-over:
/// `strait-steer 1 <policy> <migrate 0|1> <cookie>:<slot>:<weight>:<position>,...`.
struct HandOverNote {
    var policy: SteeringPolicy
    var migrates: Bool
    var members: [SteeringGroup.Member]

    init(policy: SteeringPolicy, migrates: Bool, members: [SteeringGroup.Member]) {
        self.policy = policy
        self.migrates = migrates
        self.members = members
    }

    init?(_ text: String) {
        let fields = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 5, fields[0] == "strait-steer", fields[1] == "1", let policy = SteeringPolicy(parsing: fields[2]) else { return nil }
        self.policy = policy
        migrates = fields[3] == "1"
        var members: [SteeringGroup.Member] = []
        for entry in fields[4].split(separator: ",") {
            let parts = entry.split(separator: ":").compactMap { UInt64($0) }
            guard parts.count == 4, parts[1] < UInt64(STRAIT_STEER_MAX_MEMBERS) else { return nil }
            members.append(SteeringGroup.Member(cookie: parts[0], slot: UInt32(parts[1]), weight: Int(parts[2]), position: Int(parts[3])))
        }
        self.members = members
    }

    var text: String {
        "strait-steer 1 \(policy) \(migrates ? 1 : 0) " + members.map { "\($0.cookie):\($0.slot):\($0.weight):\($0.position)" }.joined(separator: ",")
    }
}

/// What the steering program did, summed over CPUs since the group was created.
public struct SteeringCounters: Sendable, Equatable, Codable {
    /// Connections or datagrams sent to the member the policy chose.
    public var selected = 0
    /// The chosen member had closed: the kernel's hash chose among live members.
    public var unavailable = 0
    /// Datagrams too short for the payload key, sent to the fallback.
    public var shortPayload = 0
    /// Connections queued on a closing listener that the program placed on a live one.
    public var migrated = 0

    /// All counters zero.
    public init() {}
}
