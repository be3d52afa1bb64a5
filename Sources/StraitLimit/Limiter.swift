import CLibBPF
import Foundation
import StraitBPF
import StraitDrop
import StraitKernelABI
import StraitSystem

/// Rate limits held in maps, applied in two places (see `bpf/limit.bpf.c`):
/// - per connection, a sock_ops program on each cgroup that has such rules sets
///   `SO_MAX_PACING_RATE` on the cgroup's matching TCP sockets, and TCP paces itself;
/// - in aggregate, a tc program on each interface that has such rules (a tcx egress link, under
///   fq) gives every matching packet a departure time, so all connections of one client or cgroup
///   share one rate (Earliest Departure Time, as Cilium's bandwidth manager).
///
/// Everything lives pinned under ``pinDirectory`` (default `/sys/fs/bpf/strait/limit`): both
/// programs, the maps, one link per cgroup and per interface. A `Limiter` value holds descriptors
/// to those pins; dropping it changes nothing. Commands that change rules take a `flock` on the pin
/// directory. Rules are data: setting, changing or removing one is a few map writes plus a bump of
/// the generation in `config`, which established sockets compare at their next RTT callback; nothing
/// is reloaded. Removing the last rule of a cgroup or interface detaches the program from it (and
/// deletes the fq Strait installed); removing the last rule removes everything.
public final class Limiter: @unchecked Sendable {
    /// Where `strait limit` pins everything unless told otherwise.
    public static let defaultPinDirectory = BPFFS.defaultMount + "/strait/limit"
    /// Aggregate limits drop packets that would wait longer than this (Cilium's value).
    public static let defaultHorizonNanoseconds: UInt64 = 2_000_000_000

    /// The bpffs folder this value's descriptors were opened from.
    public let pinDirectory: String
    let config: TypedMap<UInt32, strait_limit_config>
    let rules: TypedMap<UInt32, strait_limit_rule>
    let connectionCgroups: TypedMap<UInt64, UInt32>
    let connectionPorts: TypedMap<strait_limit_port_key, UInt32>
    let connectionPrefixes: TypedMap<strait_limit_conn_prefix_key, UInt32>
    let aggregateCgroups: TypedMap<strait_limit_agg_cgroup_key, UInt32>
    let aggregateDestinations: TypedMap<strait_limit_agg_dest_key, UInt32>
    let counters: TypedMap<UInt32, strait_limit_counter>
    let interfaces: TypedMap<UInt32, strait_limit_interface>
    let departures: TypedMap<UInt32, DepartureClock>

    /// A value of the kernel-only `departures` map: `struct bpf_spin_lock` (padded to 8 bytes) and
    /// the time the rule's last packet leaves. User space only creates and deletes entries.
    struct DepartureClock { var lock: UInt64 = 0; var nextNanoseconds: UInt64 = 0 }

    static let mapNames = ["config", "rules", "conn_cgroup", "conn_port", "conn_prefix", "agg_cgroup", "agg_dest", "counters", "interfaces", "departures"]
    static let sockOpsProgram = "strait_limit_sockops"
    static let egressProgram = "strait_limit_egress"

    /// The pin folder at `directory`: the maps, both programs (the egress one last), `links/`.
    static func folder(_ directory: String) -> PinFolder {
        PinFolder(path: directory, repairAdvice: "Run `strait limit remove --all` (or remove \(directory)), then start again.")
    }
    var folder: PinFolder { Self.folder(pinDirectory) }
    static func cgroupLinkPath(_ id: UInt64, in directory: String) -> String { folder(directory).linksPath + "/cgroup_\(id)" }
    static func interfaceLinkPath(_ ifindex: UInt32, in directory: String) -> String { folder(directory).linksPath + "/tcx_\(ifindex)" }

    private init(pinDirectory: String) throws {
        self.pinDirectory = pinDirectory
        let folder = Self.folder(pinDirectory)
        func open(_ name: String) throws -> BPFMap { try folder.map(name) }
        config = try open("config").typed(key: UInt32.self, value: strait_limit_config.self)
        rules = try open("rules").typed(key: UInt32.self, value: strait_limit_rule.self)
        connectionCgroups = try open("conn_cgroup").typed(key: UInt64.self, value: UInt32.self)
        connectionPorts = try open("conn_port").typed(key: strait_limit_port_key.self, value: UInt32.self)
        connectionPrefixes = try open("conn_prefix").typed(key: strait_limit_conn_prefix_key.self, value: UInt32.self)
        aggregateCgroups = try open("agg_cgroup").typed(key: strait_limit_agg_cgroup_key.self, value: UInt32.self)
        aggregateDestinations = try open("agg_dest").typed(key: strait_limit_agg_dest_key.self, value: UInt32.self)
        counters = try open("counters").typed(key: UInt32.self, value: strait_limit_counter.self)
        interfaces = try open("interfaces").typed(key: UInt32.self, value: strait_limit_interface.self)
        departures = try open("departures").typed(key: UInt32.self, value: DepartureClock.self)
    }

    /// Whether the programs and maps are pinned under `pinDirectory`.
    public static func isLoaded(pinDirectory: String = defaultPinDirectory) -> Bool {
        folder(pinDirectory).contains([egressProgram, "config"])
    }

    /// The kernel object shipped with this module (built from `bpf/limit.bpf.c`).
    static func objectSpec() throws -> BPFObjectSpec { try BPFObjectSpec(embedded: .limit) }

    /// Opens the pinned programs and maps; with `create`, loads and pins them first when absent
    /// (no rules: nothing is limited and nothing is attached until ``set(_:rate:protecting:floor:)``).
    public static func open(pinDirectory: String = defaultPinDirectory, create: Bool = false) throws -> Limiter {
        if isLoaded(pinDirectory: pinDirectory) { return try Limiter(pinDirectory: pinDirectory) }
        guard create else { throw LimitError.notLoaded(pinDirectory) }
        let object = try objectSpec().load()
        defer { object.close() }
        // The egress program last: `isLoaded` is true only once everything else is in place.
        try folder(pinDirectory).populate(object: object, maps: mapNames, programs: [(sockOpsProgram, sockOpsProgram), (egressProgram, egressProgram)]) {
            try Limiter(pinDirectory: pinDirectory).config.update(0, strait_limit_config(generation: 1, next_rule_id: 1, horizon_ns: defaultHorizonNanoseconds))
        }
        return try Limiter(pinDirectory: pinDirectory)
    }

    /// Runs `body` holding the pin folder's lock, so rule changes from two commands never interleave.
    func locked<T>(_ body: () throws -> T) throws -> T { try folder.locked(body) }

    func currentConfig() throws -> strait_limit_config {
        guard let configuration = try config.lookup(0) else { throw LimitError.notLoaded(pinDirectory) }
        return configuration
    }

    /// Tells established sockets that rules changed: each looks its rule up again at its next RTT callback.
    func bumpGeneration() throws {
        var configuration = try currentConfig()
        configuration.generation &+= 1
        if configuration.generation == 0 { configuration.generation = 1 }  // 0 is "never looked up"
        try config.update(0, configuration)
    }

    // MARK: Keys

    /// Where a selector lives in the maps, with its key.
    enum Slot {
        case connectionCgroup(UInt64)
        case connectionPort(strait_limit_port_key)
        case connectionPrefix(strait_limit_conn_prefix_key)
        case aggregateCgroup(strait_limit_agg_cgroup_key)
        case aggregateDestination(strait_limit_agg_dest_key)
    }

    static func mappedBytes(_ prefix: IPPrefix) -> [UInt8] { prefix.address.isIPv4 ? prefix.address.ipv6Mapped : prefix.address.bytes }

    /// The slot of `selector`; aggregate selectors resolve their interface in the calling thread's namespace.
    static func slot(of selector: LimitSelector) throws -> Slot {
        switch selector.scope {
        case .connection:
            let cgroup = selector.cgroupID ?? 0
            if let port = selector.localPort { return .connectionPort(strait_limit_port_key(cgroup_id: cgroup, port: port, remote: 0, reserved: (0, 0, 0, 0, 0))) }
            if let port = selector.remotePort { return .connectionPort(strait_limit_port_key(cgroup_id: cgroup, port: port, remote: 1, reserved: (0, 0, 0, 0, 0))) }
            if let prefix = selector.remote {
                var key = strait_limit_conn_prefix_key()
                key.prefixlen = UInt32(64 + prefix.ipv6MappedLength)
                withUnsafeMutableBytes(of: &key.cgroup_id) { $0.storeBytes(of: cgroup, as: UInt64.self) }
                withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: mappedBytes(prefix)) }
                return .connectionPrefix(key)
            }
            return .connectionCgroup(cgroup)
        case .aggregate:
            let ifindex = try NetworkInterface(named: selector.interface ?? "").index
            if let cgroup = selector.cgroupID { return .aggregateCgroup(strait_limit_agg_cgroup_key(cgroup_id: cgroup, ifindex: ifindex, reserved: 0)) }
            let prefix = selector.remote!
            var key = strait_limit_agg_dest_key()
            key.prefixlen = UInt32(32 + prefix.ipv6MappedLength)
            withUnsafeMutableBytes(of: &key.ifindex) { $0.storeBytes(of: ifindex, as: UInt32.self) }
            withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: mappedBytes(prefix)) }
            return .aggregateDestination(key)
        }
    }

    func lookup(_ slot: Slot) throws -> UInt32? {
        switch slot {
        case .connectionCgroup(let key): try connectionCgroups.lookup(key)
        case .connectionPort(let key): try connectionPorts.lookup(key)
        case .connectionPrefix(let key): try exactPrefix(key, in: connectionPrefixes, prefixLength: \.prefixlen)
        case .aggregateCgroup(let key): try aggregateCgroups.lookup(key)
        case .aggregateDestination(let key): try exactPrefix(key, in: aggregateDestinations, prefixLength: \.prefixlen)
        }
    }

    /// An LPM lookup answers with the longest stored prefix no longer than the key's; only a stored
    /// key of the same length is this rule.
    func exactPrefix<Key>(_ key: Key, in map: TypedMap<Key, UInt32>, prefixLength: KeyPath<Key, UInt32>) throws -> UInt32? {
        for stored in try map.keys() where stored[keyPath: prefixLength] == key[keyPath: prefixLength] {
            if withUnsafeBytes(of: stored, { Array($0) }) == withUnsafeBytes(of: key, { Array($0) }) { return try map.lookup(stored) }
        }
        return nil
    }

    func store(_ slot: Slot, id: UInt32) throws(BPFError) {
        switch slot {
        case .connectionCgroup(let key): try connectionCgroups.update(key, id)
        case .connectionPort(let key): try connectionPorts.update(key, id)
        case .connectionPrefix(let key): try connectionPrefixes.update(key, id)
        case .aggregateCgroup(let key): try aggregateCgroups.update(key, id)
        case .aggregateDestination(let key): try aggregateDestinations.update(key, id)
        }
    }

    func erase(_ slot: Slot) throws {
        switch slot {
        case .connectionCgroup(let key): _ = try connectionCgroups.delete(key)
        case .connectionPort(let key): _ = try connectionPorts.delete(key)
        case .connectionPrefix(let key): _ = try connectionPrefixes.delete(key)
        case .aggregateCgroup(let key): _ = try aggregateCgroups.delete(key)
        case .aggregateDestination(let key): _ = try aggregateDestinations.delete(key)
        }
    }

    // MARK: Rules

    /// Every rule, per-connection ones first. Interface names come from the `interfaces` map.
    public func rulesList() throws -> [LimitRule] {
        let names = Dictionary(try interfaces.keys().compactMap { index in try interfaces.lookup(index).map { (index, $0.interfaceName) } }, uniquingKeysWith: { a, _ in a })
        var entries: [(UInt32, LimitSelector)] = []
        for key in try connectionPorts.keys() {
            guard let id = try connectionPorts.lookup(key) else { continue }
            let port = key.port
            entries.append((id, try .connection(cgroupID: key.cgroup_id, localPort: key.remote == 0 ? port : nil, remotePort: key.remote == 1 ? port : nil)))
        }
        for key in try connectionPrefixes.keys() {
            guard let id = try connectionPrefixes.lookup(key) else { continue }
            let cgroup = withUnsafeBytes(of: key.cgroup_id) { $0.loadUnaligned(as: UInt64.self) }
            entries.append((id, try .connection(cgroupID: cgroup, remote: Self.prefix(mapped: key.addr, length: Int(key.prefixlen) - 64))))
        }
        for key in try connectionCgroups.keys() {
            if let id = try connectionCgroups.lookup(key) { entries.append((id, try .connection(cgroupID: key))) }
        }
        for key in try aggregateCgroups.keys() {
            guard let id = try aggregateCgroups.lookup(key) else { continue }
            entries.append((id, try .aggregate(interface: names[key.ifindex] ?? "ifindex \(key.ifindex)", cgroupID: key.cgroup_id)))
        }
        for key in try aggregateDestinations.keys() {
            guard let id = try aggregateDestinations.lookup(key) else { continue }
            let ifindex = withUnsafeBytes(of: key.ifindex) { $0.loadUnaligned(as: UInt32.self) }
            entries.append((id, try .aggregate(interface: names[ifindex] ?? "ifindex \(ifindex)", remote: Self.prefix(mapped: key.addr, length: Int(key.prefixlen) - 32))))
        }
        return try entries.compactMap { id, selector in
            try rules.lookup(id).map { LimitRule(id: id, selector: selector, rate: LimitRate(bitsPerSecond: $0.rate_bytes_per_second * 8)) }
        }.sorted { ($0.selector.scope == .connection ? 0 : 1, $0.id) < ($1.selector.scope == .connection ? 0 : 1, $1.id) }
    }

    static func prefix<T>(mapped tuple: T, length: Int) -> IPPrefix {
        let bytes = withUnsafeBytes(of: tuple) { Array($0) }
        if bytes.prefix(12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && length >= 96 {
            return IPPrefix(address: IPAddress(ipv6Mapped: bytes), length: length - 96)
        }
        return IPPrefix(address: .v6(bytes), length: length)
    }

    /// What ``set(_:rate:protecting:floor:)`` did.
    public struct SetOutcome: Sendable {
        /// False when a rule with this selector existed and only its rate changed.
        public var created: Bool
        /// True when fq was installed as the root qdisc of the rule's interface just now.
        public var installedFairQueue: Bool
    }

    /// Sets the rate of the rule with `selector`, creating the rule (and attaching the program to its
    /// cgroup or interface) when there is none. Established sockets see the change at their next RTT
    /// callback. Refused (``LimitError/wouldThrottle(_:rule:floor:)``) when the rule would limit a
    /// `protecting` peer's connection below `floor`. For aggregate rules, interfaces are resolved in the
    /// calling thread's namespace, and fq is installed when the root qdisc is the kernel's default.
    @discardableResult
    public func set(_ selector: LimitSelector, rate: LimitRate, protecting: [ProtectedSource] = [], floor: LimitRate = LimitRate(bitsPerSecond: 1_000_000)) throws -> SetOutcome {
        try locked {
            if rate < floor, let source = protecting.first(where: { selector.matches(protected: $0) }) {
                throw LimitError.wouldThrottle(source, rule: "\(rate) \(selector)", floor: floor)
            }
            let slot = try Self.slot(of: selector)
            let value = strait_limit_rule(rate_bytes_per_second: max(1, rate.bytesPerSecond), scope: selector.scope == .connection ? UInt32(STRAIT_LIMIT_CONNECTION.rawValue) : UInt32(STRAIT_LIMIT_AGGREGATE.rawValue), reserved: 0)
            if let id = try lookup(slot) {
                try rules.update(id, value)
                try bumpGeneration()
                return SetOutcome(created: false, installedFairQueue: false)
            }
            let installed = try attachHook(for: slot, selector: selector)
            try storeRule(slot, value)
            return SetOutcome(created: true, installedFairQueue: installed)
        }
    }

    /// Writes a new rule under a fresh id: its counter and departure clock first, then the rule,
    /// then the selector, so the programs find everything from the first match. Attaches nothing.
    @discardableResult
    func storeRule(_ slot: Slot, _ value: strait_limit_rule) throws -> UInt32 {
        var configuration = try currentConfig()
        let id = configuration.next_rule_id
        configuration.next_rule_id &+= 1
        try config.update(0, configuration)
        do throws(BPFError) {
            try counters.updatePerCPU(id, strait_limit_counter())
            try departures.update(id, DepartureClock())
            try rules.update(id, value)
            try store(slot, id: id)
        } catch {
            if error.errno == .noSpace || error.errno?.rawValue == E2BIG { throw LimitError.tooManyRules(Int(STRAIT_LIMIT_MAX_RULES)) }
            throw error
        }
        try bumpGeneration()
        return id
    }

    /// Attaches the program the slot needs, when not attached yet. Returns whether fq was installed.
    func attachHook(for slot: Slot, selector: LimitSelector) throws -> Bool {
        switch slot {
        case .connectionCgroup, .connectionPort, .connectionPrefix:
            let id = selector.cgroupID ?? 0
            let pin = Self.cgroupLinkPath(id, in: pinDirectory)
            if BPFFS.exists(pin) { return false }
            guard let cgroup = Cgroup.find(id: id) else { throw LimitError.invalidSelector("no cgroup v2 has id \(id)") }
            let link = try BPFProgram.open(pinned: folder.path(Self.sockOpsProgram)).attach(cgroup: cgroup)
            do { try link.pin(at: pin) } catch {
                try? link.detach()
                throw error
            }
            return false
        case .aggregateCgroup, .aggregateDestination:
            let interface = try NetworkInterface(named: selector.interface ?? "")
            let pin = Self.interfaceLinkPath(interface.index, in: pinDirectory)
            if BPFFS.exists(pin) { return false }
            let installed = try FairQueue.install(on: interface.name)
            do {
                let link = try BPFProgram.open(pinned: folder.path(Self.egressProgram)).attachTCX(ifindex: interface.index, direction: .egress)
                do { try link.pin(at: pin) } catch {
                    try? link.detach()
                    throw error
                }
                try interfaces.update(interface.index, strait_limit_interface(ifindex: interface.index, installedFairQueue: installed, name: interface.name))
            } catch {
                if installed { try? FairQueue.restoreDefault(on: interface.name) }
                try? BPFFS.unpin(pin)
                throw error
            }
            return installed
        }
    }

    /// What ``remove(_:grace:)`` did.
    public struct RemoveOutcome: Sendable {
        /// False when no rule had this selector.
        public var removed: Bool
        /// The interface whose default root qdisc was put back, if any.
        public var restoredQdisc: String?
        /// True when no rule remains: nothing of strait limit is left in the kernel.
        public var nothingLeft: Bool
    }

    /// Removes the rule with `selector`. Sockets it paced go back to unlimited at their next RTT
    /// callback; when it was its cgroup's last per-connection rule, the program stays attached for
    /// `grace` seconds first so that busy connections get that callback (idle ones keep their rate
    /// until they close, as no program runs for them any more). The last aggregate rule of an
    /// interface detaches the egress program and deletes the fq that ``set(_:rate:protecting:floor:)``
    /// installed. The last rule removes everything.
    @discardableResult
    public func remove(_ selector: LimitSelector, grace: Double = 1) throws -> RemoveOutcome {
        let outcome: RemoveOutcome = try locked {
            let slot = try Self.slot(of: selector)
            guard let id = try lookup(slot) else { return RemoveOutcome(removed: false, restoredQdisc: nil, nothingLeft: false) }
            try erase(slot)
            _ = try rules.delete(id)
            _ = try counters.delete(id)
            _ = try departures.delete(id)
            try bumpGeneration()
            let remaining = try rulesList()
            var restored: String?
            switch selector.scope {
            case .connection:
                if !remaining.contains(where: { $0.selector.scope == .connection && $0.selector.cgroupID == selector.cgroupID }) {
                    if grace > 0 { Thread.sleep(forTimeInterval: grace) }
                    try detachLink(Self.cgroupLinkPath(selector.cgroupID ?? 0, in: pinDirectory))
                }
            case .aggregate:
                let interface = try NetworkInterface(named: selector.interface ?? "")
                if !remaining.contains(where: { $0.selector.scope == .aggregate && $0.selector.interface == interface.name }) {
                    restored = try release(ifindex: interface.index)
                }
            }
            return RemoveOutcome(removed: true, restoredQdisc: restored, nothingLeft: remaining.isEmpty)
        }
        if outcome.nothingLeft { try BPFFS.removeTree(pinDirectory) }
        return outcome
    }

    func detachLink(_ pin: String) throws {
        guard BPFFS.exists(pin) else { return }
        try? BPFLink.open(pinned: pin).detach()
        try BPFFS.unpin(pin)
    }

    /// Detaches the egress program from `ifindex` and restores its qdisc; returns the interface's
    /// name when fq was deleted.
    func release(ifindex: UInt32) throws -> String? {
        try detachLink(Self.interfaceLinkPath(ifindex, in: pinDirectory))
        guard let entry = try interfaces.lookup(ifindex) else { return nil }
        _ = try interfaces.delete(ifindex)
        guard entry.installed_fq != 0 else { return nil }
        try FairQueue.restoreDefault(on: entry.interfaceName)
        return entry.interfaceName
    }

    /// Detaches every link, restores every qdisc Strait installed (interfaces resolve in the calling
    /// thread's namespace) and removes everything under `pinDirectory`, whatever its state (for
    /// `remove --all`, teardown, and pins a crashed run left).
    public static func removeAll(pinDirectory: String = defaultPinDirectory) throws {
        if isLoaded(pinDirectory: pinDirectory), let limiter = try? Limiter(pinDirectory: pinDirectory) {
            for ifindex in (try? limiter.interfaces.keys()) ?? [] { _ = try? limiter.release(ifindex: ifindex) }
        }
        try folder(pinDirectory).removeAll()
    }

    // MARK: Attachments and counters

    /// Where the programs are attached, from the pinned links and the `interfaces` map.
    public struct Attachments: Sendable, Encodable {
        /// Cgroups the sock_ops program runs on (paths, or `id N` when the cgroup has gone).
        public var cgroups: [String]
        /// Interfaces the egress program runs on, and whether Strait installed their fq.
        public var interfaces: [Interface]

        /// Nothing attached (what `list` shows before anything is loaded).
        public static let none = Attachments(cgroups: [], interfaces: [])

        /// One interface with the egress program, as recorded when it was attached.
        public struct Interface: Sendable, Encodable {
            /// The interface name, as it was when the program was attached (a later rename is not
            /// seen).
            public var name: String
            /// In the namespace it was attached in.
            public var ifindex: UInt32
            /// True when `remove` will delete fq there (Strait installed it over the default).
            public var installedFairQueue: Bool
        }
    }

    /// Reads the pinned links and the `interfaces` map. Costs a directory read and a map walk.
    public func attachments() throws -> Attachments {
        let cgroups = folder.linkNames().compactMap { name -> String? in
            guard name.hasPrefix("cgroup_"), let id = UInt64(name.dropFirst(7)) else { return nil }
            return Cgroup.find(id: id)?.path ?? "id \(id)"
        }
        let entries = try interfaces.keys().compactMap { try interfaces.lookup($0) }.sorted { $0.ifindex < $1.ifindex }
        return Attachments(cgroups: cgroups, interfaces: entries.map { .init(name: $0.interfaceName, ifindex: $0.ifindex, installedFairQueue: $0.installed_fq != 0) })
    }

    /// What `strait limit stats` reports: each rule with its counters summed over CPUs.
    public struct Stats: Sendable, Encodable {
        /// The bpffs folder the limiter's maps and links are pinned in.
        public var pinDirectory: String
        /// Where the programs run.
        public var attachments: Attachments
        /// Every rule, in ``rulesList()`` order.
        public var rules: [RuleCount]

        /// One rule and its counters.
        public struct RuleCount: Sendable, Encodable {
            /// The rule, as ``rulesList()`` returns it.
            public var rule: LimitRule
            /// Aggregate: packets matched, their bytes, those given a later departure, those dropped past the horizon.
            public var packets: UInt64
            /// Aggregate: bytes of the matched packets, as the egress program saw them (headers
            /// included).
            public var bytes: UInt64
            /// Aggregate: packets given a departure time later than now (held in fq).
            public var delayed: UInt64
            /// Aggregate: packets dropped because their departure time was past the horizon.
            public var dropped: UInt64
            /// Per connection: how many times a socket's pacing rate was set by this rule.
            public var sockets: UInt64
        }
    }

    /// The rules with their counters, summed over CPUs (one map lookup per rule).
    public func stats() throws -> Stats {
        let counts = try rulesList().map { rule in
            let sum = try counters.summedOverCPUs(rule.id)
            return Stats.RuleCount(rule: rule, packets: sum.packets, bytes: sum.bytes, delayed: sum.delayed, dropped: sum.dropped, sockets: sum.sockets)
        }
        return Stats(pinDirectory: pinDirectory, attachments: try attachments(), rules: counts)
    }
}

extension strait_limit_interface {
    init(ifindex: UInt32, installedFairQueue: Bool, name: String) {
        self.init()
        self.ifindex = ifindex
        installed_fq = installedFairQueue ? 1 : 0
        withUnsafeMutableBytes(of: &self.name) { buffer in
            buffer.copyBytes(from: name.utf8.prefix(buffer.count - 1))
        }
    }

    var interfaceName: String {
        withUnsafeBytes(of: name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

extension Limiter {
    /// The kernel's id of the cgroup v2 at `path` (its directory's inode number), which rules store.
    public static func cgroupID(path: String) throws -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw LimitError.invalidSelector("\(path) is not a cgroup v2 directory")
        }
        return UInt64(info.st_ino)
    }
}
