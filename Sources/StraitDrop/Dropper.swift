import CLibBPF
import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

/// XDP early drop: one `xdp` program checks every received frame against rules held in maps
/// (source addresses in hashes, source prefixes in LPM tries, destination ports, Ethernet source addresses, ARP senders) and
/// drops matches before the stack sees them. Rules are data, so adding or removing one is a map
/// write that the next packet sees; nothing is reloaded.
///
/// Everything lives pinned under ``pinDirectory`` (default `/sys/fs/bpf/strait/drop`): the program,
/// its maps and one BPF link per attached interface, so rules and attachments outlive the command
/// that made them and every later command opens the same maps. A `Dropper` value holds descriptors
/// to those pins; dropping it changes nothing. Commands that change rules take a `flock` on the pin
/// directory, so two run one after the other.
///
/// Rules exist in two complete sets. The program reads which one is active once per packet;
/// ``load(_:protecting:)`` fills the standby set and flips the index with one map write, so no
/// packet ever sees a mix or an empty set. ``add(_:protecting:)`` and ``remove(_:protecting:)``
/// change the active set in place, one map element at a time.
public final class Dropper: @unchecked Sendable {
    /// Where the maps and links are pinned unless told otherwise: `/sys/fs/bpf/strait/drop`.
    public static let defaultPinDirectory = BPFFS.defaultMount + "/strait/drop"
    static let programName = "strait_drop"

    /// The bpffs folder holding the maps and links; they outlive this object and the process.
    public let pinDirectory: String
    let config: TypedMap<UInt32, strait_drop_config>
    let verdicts: TypedMap<UInt32, strait_drop_counter>
    let ruleHits: TypedMap<UInt32, strait_drop_counter>
    let sets: [RuleMaps]

    /// The maps of one rule set.
    struct RuleMaps {
        let host4: TypedMap<strait_drop_ipv4_host, UInt32>
        let host6: TypedMap<strait_drop_ipv6_host, UInt32>
        let source4: TypedMap<strait_drop_ipv4_key, UInt32>
        let source6: TypedMap<strait_drop_ipv6_key, UInt32>
        let ports: TypedMap<strait_drop_port_key, UInt32>
        let macs: TypedMap<strait_drop_mac_key, UInt32>
        let arp: TypedMap<strait_drop_ipv4_key, UInt32>

        static func mapNames(set: Int) -> [String] { ["host4", "host6", "src4", "src6", "port", "mac", "arp"].map { "\($0)_\(set)" } }
    }

    static let sharedMapNames = ["config", "verdicts", "rule_hits"]
    static var allMapNames: [String] { sharedMapNames + RuleMaps.mapNames(set: 0) + RuleMaps.mapNames(set: 1) }

    /// The pin folder at `directory`: the maps, the program `prog` (pinned last), `links/`.
    static func folder(_ directory: String) -> PinFolder {
        PinFolder(path: directory, repairAdvice: "Run `strait drop detach` on every interface (or remove \(directory)), then start again.")
    }
    static let programPin = "prog"
    var folder: PinFolder { Self.folder(pinDirectory) }

    private init(pinDirectory: String) throws(BPFError) {
        self.pinDirectory = pinDirectory
        let folder = Self.folder(pinDirectory)
        func open(_ name: String) throws(BPFError) -> BPFMap { try folder.map(name) }
        config = try open("config").typed(key: UInt32.self, value: strait_drop_config.self)
        verdicts = try open("verdicts").typed(key: UInt32.self, value: strait_drop_counter.self)
        ruleHits = try open("rule_hits").typed(key: UInt32.self, value: strait_drop_counter.self)
        var sets: [RuleMaps] = []
        for set in 0..<2 {
            sets.append(RuleMaps(
                host4: try open("host4_\(set)").typed(key: strait_drop_ipv4_host.self, value: UInt32.self),
                host6: try open("host6_\(set)").typed(key: strait_drop_ipv6_host.self, value: UInt32.self),
                source4: try open("src4_\(set)").typed(key: strait_drop_ipv4_key.self, value: UInt32.self),
                source6: try open("src6_\(set)").typed(key: strait_drop_ipv6_key.self, value: UInt32.self),
                ports: try open("port_\(set)").typed(key: strait_drop_port_key.self, value: UInt32.self),
                macs: try open("mac_\(set)").typed(key: strait_drop_mac_key.self, value: UInt32.self),
                arp: try open("arp_\(set)").typed(key: strait_drop_ipv4_key.self, value: UInt32.self)))
        }
        self.sets = sets
    }

    /// Whether the program and maps are pinned under `pinDirectory`.
    public static func isLoaded(pinDirectory: String = defaultPinDirectory) -> Bool {
        folder(pinDirectory).contains([programPin, "config"])
    }

    /// Opens the pinned program and maps; with `create`, loads and pins them first when absent
    /// (an empty block-list set: nothing is dropped until a rule is added).
    public static func open(pinDirectory: String = defaultPinDirectory, create: Bool = false) throws -> Dropper {
        if isLoaded(pinDirectory: pinDirectory) { return try Dropper(pinDirectory: pinDirectory) }
        guard create else { throw DropError.notLoaded(pinDirectory) }
        let object = try BPFObjectSpec(embedded: .drop).load()
        defer { object.close() }
        // The program last: `isLoaded` is true only once everything else is in place.
        try folder(pinDirectory).populate(object: object, maps: allMapNames, programs: [(programName, programPin)]) {
            try Dropper(pinDirectory: pinDirectory).config.update(0, strait_drop_config(active_set: 0, set_flags: (0, 0), next_rule_id: 1))
        }
        return try Dropper(pinDirectory: pinDirectory)
    }

    /// Runs `body` holding the pin directory's lock, so rule changes from two commands never interleave.
    func locked<T>(_ body: () throws -> T) throws -> T { try folder.locked(body) }

    // MARK: Attachments

    /// An interface the program is attached to, from the pinned links. An attachment is known by
    /// its network namespace and interface index, never by name alone: containers all call their
    /// interface `eth0`.
    public struct Attachment: Sendable, Codable, Equatable {
        /// The interface's name when read (a rename later is not seen; the index is what counts).
        public var interface: String
        /// Native (in the driver) or generic (after the socket buffer is built).
        public var mode: XDPMode
        /// The inode of the interface's network namespace (as `ls -i /proc/self/ns/net` or
        /// `ip netns identify` resolve it): unique while the namespace lives.
        public var netns: UInt64
        /// The interface's index within that namespace.
        public var ifindex: UInt32
        /// False when the interface has gone away since (the link is defunct; `detach` clears it).
        public var live: Bool

        /// An attachment as read from a pinned link; builds nothing in the kernel.
        public init(interface: String, mode: XDPMode, netns: UInt64, ifindex: UInt32, live: Bool) {
            self.interface = interface
            self.mode = mode
            self.netns = netns
            self.ifindex = ifindex
            self.live = live
        }
    }

    /// Pins are named `MODE_NETNS_IFINDEX_IFNAME` (the namespace inode and interface index in
    /// decimal), with `.` (forbidden in bpffs names) written as `%`.
    static func linkPinName(interface: String, mode: XDPMode, netns: UInt64, ifindex: UInt32) -> String {
        "\(mode.rawValue)_\(netns)_\(ifindex)_" + interface.replacingOccurrences(of: ".", with: "%")
    }

    static func parseLinkPinName(_ name: String) -> (interface: String, mode: XDPMode, netns: UInt64, ifindex: UInt32)? {
        let parts = name.split(separator: "_", maxSplits: 3).map(String.init)
        guard parts.count == 4, let mode = XDPMode(rawValue: parts[0]), let netns = UInt64(parts[1]), let ifindex = UInt32(parts[2]) else { return nil }
        return (parts[3].replacingOccurrences(of: "%", with: "."), mode, netns, ifindex)
    }

    /// Every attachment pinned here, in every network namespace.
    public func attachments() -> [Attachment] {
        return folder.linkNames().compactMap { name in
            guard let (interface, mode, netns, ifindex) = Self.parseLinkPinName(name) else { return nil }
            let link = try? BPFLink.open(pinned: folder.linksPath + "/" + name)
            let live = (try? link?.xdpInterfaceIndex()) != nil
            return Attachment(interface: interface, mode: mode, netns: netns, ifindex: ifindex, live: live)
        }
    }

    /// Attaches the program to `interface` (in the calling thread's network namespace) through a
    /// BPF link, pinned so it stays after this process exits. Native mode on a driver without XDP
    /// throws ``DropError/nativeUnsupported(_:)``; it never falls back silently. An interface of
    /// the same name in another namespace is another interface.
    public func attach(interface: String, mode: XDPMode = .native) throws {
        try locked {
            let netns = try NetworkNamespace.currentInode()
            let ifindex = try NetworkInterface(named: interface).index
            if attachments().contains(where: { $0.netns == netns && $0.ifindex == ifindex }) { throw DropError.alreadyAttached(interface) }
            let program = try BPFProgram.open(pinned: folder.path(Self.programPin))
            let link: BPFLink
            do {
                link = try program.attachXDP(ifindex: ifindex, mode: mode)
            } catch let error as BPFError where error.errno == .notSupported {
                throw DropError.nativeUnsupported(interface)
            } catch let error as BPFError where error.errno == .resourceBusy || error.errno == .fileExists {
                throw DropError.alreadyAttached(interface)
            }
            do {
                try link.pin(at: folder.linksPath + "/" + Self.linkPinName(interface: interface, mode: mode, netns: netns, ifindex: ifindex))
            } catch {
                try? link.detach()
                throw error
            }
        }
    }

    /// Detaches from `interface` in the calling thread's network namespace (found by its index, or
    /// by name once the interface is gone). When no attachment remains in any namespace, the
    /// program, the maps and their rules are removed too: nothing of strait drop stays in the
    /// kernel. Keep rules in a file and `load` it. With `removingWhenLast` false the program, maps
    /// and rules stay even then (the node agent re-attaching its only interface in another mode
    /// keeps its rules and their counters).
    public func detach(interface: String, removingWhenLast: Bool = true) throws {
        try locked {
            let netns = try NetworkNamespace.currentInode()
            let ifindex = try? NetworkInterface(named: interface).index
            let matches = { (attachment: Attachment) in
                attachment.netns == netns && (ifindex.map { attachment.ifindex == $0 } ?? (attachment.interface == interface))
            }
            guard let attachment = attachments().first(where: matches) else {
                throw DropError.notAttached(interface)
            }
            let pin = folder.linksPath + "/" + Self.linkPinName(interface: attachment.interface, mode: attachment.mode, netns: attachment.netns, ifindex: attachment.ifindex)
            // A link whose interface has gone is detached already; only its pin is left to remove.
            if attachment.live { try BPFLink.open(pinned: pin).detach() }
            try BPFFS.unpin(pin)
        }
        if removingWhenLast && attachments().isEmpty { try BPFFS.removeTree(pinDirectory) }
    }

    /// Detaches every pinned link and removes everything under `pinDirectory`, whatever its state
    /// (for teardown, and for pins a crashed run left).
    public static func removeAll(pinDirectory: String = defaultPinDirectory) throws {
        try folder(pinDirectory).removeAll()
    }

    // MARK: Rules

    /// The active set: its mode and rules, in map order (per kind: sources, ports, MACs, ARP).
    public func ruleSet() throws -> DropRuleSet {
        let configuration = try currentConfig()
        return DropRuleSet(mode: DropMode(flags: configuration.flagsOfActiveSet), rules: try rulesWithIDs(in: sets[Int(configuration.active_set & 1)]).map(\.rule))
    }

    func currentConfig() throws -> strait_drop_config {
        guard let configuration = try config.lookup(0) else { throw DropError.notLoaded(pinDirectory) }
        return configuration
    }

    func rulesWithIDs(in maps: RuleMaps) throws -> [(rule: DropRule, id: UInt32)] {
        var result: [(DropRule, UInt32)] = []
        for key in try maps.host4.keys() { if let id = try maps.host4.lookup(key) { result.append((.source(DropRuleKey.rule(key)), id)) } }
        for key in try maps.host6.keys() { if let id = try maps.host6.lookup(key) { result.append((.source(DropRuleKey.rule(key)), id)) } }
        for key in try maps.source4.keys() { if let id = try maps.source4.lookup(key) { result.append((.source(DropRuleKey.rule(key)), id)) } }
        for key in try maps.source6.keys() { if let id = try maps.source6.lookup(key) { result.append((.source(DropRuleKey.rule(key)), id)) } }
        for key in try maps.ports.keys() { if let id = try maps.ports.lookup(key) { result.append((DropRuleKey.rule(key), id)) } }
        for key in try maps.macs.keys() { if let id = try maps.macs.lookup(key) { result.append((DropRuleKey.rule(key), id)) } }
        for key in try maps.arp.keys() { if let id = try maps.arp.lookup(key) { result.append((.arpSender(DropRuleKey.rule(key)), id)) } }
        return result
    }

    /// Stores `rule` under `id` unless it is there already; returns whether it was stored. Its
    /// counter is created first, so the program finds one from the first match.
    func insert(_ rule: DropRule, id: UInt32, into maps: RuleMaps) throws -> Bool {
        try ruleHits.updatePerCPU(id, strait_drop_counter())
        let failure: BPFError?
        do {
            try store(rule, id: id, into: maps, flags: .noExist)
            failure = nil
        } catch {
            failure = error
        }
        guard let failure else { return true }
        try ruleHits.delete(id)
        if failure.errno == .fileExists { return false }
        if failure.errno == .noSpace || failure.errno?.rawValue == E2BIG {
            throw DropError.tooManyRules(kind: DropRuleKey(rule).kind, limit: DropRuleKey(rule).limit)
        }
        throw failure
    }

    /// Writes `rule → id` into the map of its kind.
    func store(_ rule: DropRule, id: UInt32, into maps: RuleMaps, flags: BPFMap.UpdateFlags) throws(BPFError) {
        switch DropRuleKey(rule) {
        case .host4(let key): try maps.host4.update(key, id, flags: flags)
        case .host6(let key): try maps.host6.update(key, id, flags: flags)
        case .source4(let key): try maps.source4.update(key, id, flags: flags)
        case .source6(let key): try maps.source6.update(key, id, flags: flags)
        case .port(let key): try maps.ports.update(key, id, flags: flags)
        case .mac(let key): try maps.macs.update(key, id, flags: flags)
        case .arp(let key): try maps.arp.update(key, id, flags: flags)
        }
    }

    /// Removes `rule` (exactly that prefix, port, address) and its counter; returns whether it was there.
    ///
    /// An LPM lookup of a prefix returns the longest stored prefix no longer than it, which is the
    /// prefix itself when stored: so the id read first belongs to the rule the delete then removes.
    func delete(_ rule: DropRule, from maps: RuleMaps, keepingCountersOf kept: Set<UInt32> = []) throws -> Bool {
        let id: UInt32?
        let removed: Bool
        switch DropRuleKey(rule) {
        case .host4(let key): id = try maps.host4.lookup(key); removed = try maps.host4.delete(key)
        case .host6(let key): id = try maps.host6.lookup(key); removed = try maps.host6.delete(key)
        case .source4(let key): id = try maps.source4.lookup(key); removed = try maps.source4.delete(key)
        case .source6(let key): id = try maps.source6.lookup(key); removed = try maps.source6.delete(key)
        case .port(let key): id = try maps.ports.lookup(key); removed = try maps.ports.delete(key)
        case .mac(let key): id = try maps.macs.lookup(key); removed = try maps.macs.delete(key)
        case .arp(let key): id = try maps.arp.lookup(key); removed = try maps.arp.delete(key)
        }
        if removed, let id, !kept.contains(id) { try ruleHits.delete(id) }
        return removed
    }

    /// Takes `count` fresh rule ids from the config (ids are never reused, so a new rule never
    /// inherits an old rule's counters).
    func allocateIDs(_ count: Int) throws -> UInt32 {
        var configuration = try currentConfig()
        let first = configuration.next_rule_id
        configuration.next_rule_id = first &+ UInt32(count)
        try config.update(0, configuration)
        return first
    }

    /// Refuses a set with more rules of one kind than its map holds, before any map is touched: the
    /// same ``DropError/tooManyRules(kind:limit:)`` every time, never a half-filled standby set.
    static func checkCapacity(_ rules: [DropRule]) throws(DropError) {
        var counts: [String: Int] = [:]
        for rule in rules {
            let key = DropRuleKey(rule)
            let count = counts[key.kind, default: 0] + 1
            guard count <= key.limit else { throw .tooManyRules(kind: key.kind, limit: key.limit) }
            counts[key.kind] = count
        }
    }

    /// Refuses a change after which a protected source that passes now would be dropped.
    func checkLockOut(from current: DropRuleSet, to next: DropRuleSet, protecting: [ProtectedSource], change: String) throws {
        for source in protecting where current.admits(source: source.address, tcpPort: source.tcpPort) {
            if !next.admits(source: source.address, tcpPort: source.tcpPort) { throw DropError.wouldLockOut(source, change: change) }
        }
    }

    /// Adds `rule` to the active set; the next packet sees it. Returns false when it was there
    /// already. Refused when it would drop a `protecting` source.
    @discardableResult
    public func add(_ rule: DropRule, protecting: [ProtectedSource] = []) throws -> Bool {
        try locked {
            if !protecting.isEmpty {
                let current = try ruleSet()
                var next = current
                next.rules.append(rule)
                try checkLockOut(from: current, to: next, protecting: protecting, change: "adding '\(rule)'")
            }
            let active = Int(try currentConfig().active_set & 1)
            return try insert(rule, id: try allocateIDs(1), into: sets[active])
        }
    }

    /// Removes `rule` from the active set; returns false when it was not there. Refused when it
    /// would drop a `protecting` source (in allow-list mode, removing the rule that admits it).
    @discardableResult
    public func remove(_ rule: DropRule, protecting: [ProtectedSource] = []) throws -> Bool {
        try locked {
            if !protecting.isEmpty {
                let current = try ruleSet()
                var next = current
                next.rules.removeAll { $0 == rule }
                try checkLockOut(from: current, to: next, protecting: protecting, change: "removing '\(rule)'")
            }
            return try delete(rule, from: sets[Int(try currentConfig().active_set & 1)])
        }
    }

    /// Switches the active set between block-list and allow-list mode with one map write.
    public func setMode(_ mode: DropMode, protecting: [ProtectedSource] = []) throws {
        try locked {
            let current = try ruleSet()
            try checkLockOut(from: current, to: DropRuleSet(mode: mode, rules: current.rules), protecting: protecting, change: "switching to \(mode)-list mode")
            var configuration = try currentConfig()
            configuration.setFlags(mode.flags, ofSet: configuration.active_set)
            try config.update(0, configuration)
        }
    }

    /// Replaces the whole rule set and its mode at once.
    ///
    /// The standby set is emptied and filled (rules that stay keep their ids, hence their counters),
    /// then one write to `config` makes it active: each packet is checked against either the old set
    /// or the new one, never a mix and never nothing. The old set stays in the standby maps until the
    /// next load empties them (a packet may still be reading it at the flip). Costs two map syscalls
    /// per rule.
    public func load(_ ruleSet: DropRuleSet, protecting: [ProtectedSource] = []) throws {
        try Self.checkCapacity(ruleSet.rules)
        try locked {
            let current = try self.ruleSet()
            try checkLockOut(from: current, to: ruleSet, protecting: protecting, change: "loading this rule set")
            var configuration = try currentConfig()
            let active = configuration.active_set & 1
            let standby = active ^ 1
            let activeRules = try rulesWithIDs(in: sets[Int(active)])
            let activeIDs = Set(activeRules.map(\.id))
            var keptIDs: [DropRule: UInt32] = [:]
            for (rule, id) in activeRules { keptIDs[rule] = id }

            // Empty the standby set; counters of rules that are not also active go with it.
            for (rule, _) in try rulesWithIDs(in: sets[Int(standby)]) {
                _ = try delete(rule, from: sets[Int(standby)], keepingCountersOf: activeIDs)
            }
            let fresh = ruleSet.rules.filter { keptIDs[$0] == nil }.count
            var nextID = try allocateIDs(fresh)
            for rule in ruleSet.rules {
                if let id = keptIDs[rule] {
                    try store(rule, id: id, into: sets[Int(standby)], flags: .any)  // keeps its counter
                } else {
                    _ = try insert(rule, id: nextID, into: sets[Int(standby)])
                    nextID &+= 1
                }
            }
            configuration = try currentConfig()
            configuration.setFlags(ruleSet.mode.flags, ofSet: standby)
            try config.update(0, configuration)
            configuration.active_set = standby
            try config.update(0, configuration)
        }
    }
}

extension DropRuleKey {
    var kind: String {
        switch self {
        case .host4: "IPv4 host (/32)"
        case .host6: "IPv6 host (/128)"
        case .source4: "IPv4 prefix"
        case .source6: "IPv6 prefix"
        case .port: "port"
        case .mac: "Ethernet address"
        case .arp: "ARP"
        }
    }

    var limit: Int {
        switch self {
        case .host4, .host6, .source4, .source6: Int(STRAIT_DROP_MAX_PREFIXES)
        case .port: Int(STRAIT_DROP_MAX_PORTS)
        case .mac: Int(STRAIT_DROP_MAX_MACS)
        case .arp: Int(STRAIT_DROP_MAX_ARP)
        }
    }
}
