import CLibBPF
import Foundation
import StraitBPF
import StraitKernelABI
import StraitMaglev
import StraitSystem

/// Connect-time load balancing for the sockets of one cgroup v2: lb.bpf.c's cgroup programs
/// (connect, UDP sendmsg and recvmsg, getpeername, IPv4 and IPv6; sock_release) attached as BPF links,
/// and the maps that say which virtual addresses are services and where their sockets go.
///
/// A `LoadBalancer` owns the links and the maps: they live as long as it does (``close()`` or
/// deinit detaches everything; nothing is pinned unless `pinDirectory` is given, and then only
/// the counters, for `strait lb status`). Processes outside the cgroup are never affected.
///
/// A *persistent* balancer (``init(cgroup:capacity:persistingIn:)``, what the node agent runs)
/// instead pins every map and link and records its bookkeeping (slots, tables, backend ids) in a
/// JSON file after every change, so the balancing outlives the process: ``adopt(cgroup:persistence:)``
/// opens it again and the next ``apply(_:down:)`` writes only what differs. ``close()`` then
/// releases only descriptors; ``LBPersistence/remove()`` detaches and unpins.
///
/// Every change goes through ``apply(_:down:)``, which computes each service's table in Swift
/// (``LBTable``), writes it to the service's standby table and then flips the service to it with
/// one write of its `lb_services` value. A connect reads that value once, so it uses one whole
/// table, old or new. Backends keep their ids across changes (Maglev's permutations follow the
/// id); when backends only leave, the live owners keep their entries (``LBTable/shrink(_:fresh:live:)``),
/// so only the leavers' sockets move; and the kernel entry of a backend that leaves is deleted only on the next apply, once no
/// connect can still be reading a table that names it. Costs: one map write per changed table and
/// one per changed service; an unchanged service costs nothing.
public final class LoadBalancer: @unchecked Sendable {
    /// The programs of lb.bpf.c and the cgroup hook each attaches to.
    static let programs: [(name: String, hook: bpf_attach_type)] = [
        ("lb_connect4", BPF_CGROUP_INET4_CONNECT), ("lb_connect6", BPF_CGROUP_INET6_CONNECT),
        ("lb_sendmsg4", BPF_CGROUP_UDP4_SENDMSG), ("lb_sendmsg6", BPF_CGROUP_UDP6_SENDMSG),
        ("lb_recvmsg4", BPF_CGROUP_UDP4_RECVMSG), ("lb_recvmsg6", BPF_CGROUP_UDP6_RECVMSG),
        ("lb_getpeername4", BPF_CGROUP_INET4_GETPEERNAME), ("lb_getpeername6", BPF_CGROUP_INET6_GETPEERNAME),
        ("lb_release", BPF_CGROUP_INET_SOCK_RELEASE),
    ]
    /// Maps pinned for `strait lb status` when a pin directory is given.
    static let pinnedMapNames = ["lb_backend_stats", "lb_counters"]
    /// Maps a persistent balancer also pins, to write its tables again after a restart.
    static let persistentMapNames = ["lb_services", "lb_tables", "lb_backends"] + pinnedMapNames

    /// The cgroup whose sockets are balanced.
    public let cgroup: Cgroup
    /// Services the maps hold at most (fixed at start).
    public let capacity: Int
    /// Where the counters are pinned, if anywhere.
    public let pinDirectory: String?
    /// Where a persistent balancer keeps its pins and record; nil: it goes with the process.
    public let persistence: LBPersistence?

    private let lock = NSLock()
    private var links: [BPFLink]
    private let services: TypedMap<strait_lb_service_key, strait_lb_service>
    private let tables: TypedMap<UInt32, strait_lb_table>
    private let backends: TypedMap<UInt32, strait_lb_backend>
    private let backendStats: TypedMap<UInt32, strait_lb_backend_stats>
    private let counters: TypedMap<UInt32, UInt64>

    /// A service as the kernel holds it now.
    private struct Installed {
        var slot: UInt32
        var table: UInt32
        var contents: [UInt32]?
        var policy: LBPolicy
        var config: LBServiceConfig
        var backendIDs: [UInt32]
        var down: Set<LBBackendConfig>
        /// Live members of `contents` and their weights.
        var weights: [UInt32: Int]
    }

    private struct ServiceIdentity: Hashable {
        var address: IPAddress
        var port: UInt16
        var transport: LBProtocol
    }

    private struct BackendIdentity: Hashable {
        var service: ServiceIdentity
        var address: IPAddress
        var port: UInt16
    }

    /// A persistent balancer's bookkeeping, as written to ``LBPersistence/recordFile``: what the
    /// maps hold and which ids and slots are taken, so an adopting process computes the same
    /// tables and writes nothing that is already there.
    private struct Record: Codable {
        /// A service or backend address as text (`IPAddress` is not Codable), port and protocol.
        struct Endpoint: Codable, Hashable {
            var address: String
            var port: UInt16
            var transport: LBProtocol

            init(_ service: ServiceIdentity) { self.init(service.address, service.port, service.transport) }
            init(_ address: IPAddress, _ port: UInt16, _ transport: LBProtocol) {
                self.address = address.description
                self.port = port
                self.transport = transport
            }

            var service: ServiceIdentity? { IPAddress(address).map { ServiceIdentity(address: $0, port: port, transport: transport) } }
        }
        struct Service: Codable {
            var identity: Endpoint
            var slot: UInt32
            var table: UInt32
            var contents: [UInt32]?
            var policy: LBPolicy
            var weights: [UInt32: Int]
        }
        struct Backend: Codable {
            var service: Endpoint
            var backend: Endpoint
            var id: UInt32

            var identity: BackendIdentity? {
                guard let service = service.service, let address = IPAddress(backend.address) else { return nil }
                return BackendIdentity(service: service, address: address, port: backend.port)
            }
        }
        var cgroup: String
        var capacity: Int
        var services: [Service]
        var backends: [Backend]
        var nextBackendID: UInt32
        var nextSlot: UInt32
        var freeSlots: [UInt32]
        var retiredBackends: [UInt32]
    }

    private var installed: [ServiceIdentity: Installed] = [:]
    private var backendIDs: [BackendIdentity: UInt32] = [:]
    private var nextBackendID: UInt32 = 1
    private var nextSlot: UInt32 = 0
    private var freeSlots: [UInt32] = []
    private var retiredBackends: [UInt32] = []

    /// Loads lb.bpf.c with maps sized for `capacity` services and attaches its programs to
    /// `cgroup`. With `pinDirectory`, pins the counters there (replacing older pins).
    public convenience init(cgroup: Cgroup, capacity: Int = Int(STRAIT_LB_MAX_SERVICES), pinDirectory: String? = nil) throws {
        try self.init(cgroup: cgroup, capacity: capacity, pinDirectory: pinDirectory, persistence: nil)
    }

    /// A persistent balancer: like ``init(cgroup:capacity:pinDirectory:)``, but every map and link
    /// is pinned under `persistence`'s folder (whatever was there is detached and removed first) and
    /// the record is written, so the balancing stays when this process ends.
    public convenience init(cgroup: Cgroup, capacity: Int = Int(STRAIT_LB_MAX_SERVICES), persistingIn persistence: LBPersistence) throws {
        try self.init(cgroup: cgroup, capacity: capacity, pinDirectory: persistence.pinDirectory, persistence: persistence)
        try lock.withLock { () throws in try writeRecord() }
    }

    private init(cgroup: Cgroup, capacity: Int, pinDirectory: String?, persistence: LBPersistence?) throws {
        guard cgroup.exists else { throw LBError.noSuchCgroup(cgroup.path) }
        self.cgroup = cgroup
        self.capacity = capacity
        self.pinDirectory = pinDirectory
        self.persistence = persistence
        let spec = try BPFObjectSpec(embedded: .lb)
        let backendCapacity = UInt32(max(Int(STRAIT_LB_MAX_BACKEND_ENTRIES), capacity * 4))
        try spec.setMaxEntries(UInt32(capacity), forMap: "lb_services")
        try spec.setMaxEntries(UInt32(capacity * 2), forMap: "lb_tables")
        try spec.setMaxEntries(backendCapacity, forMap: "lb_backends")
        try spec.setMaxEntries(backendCapacity, forMap: "lb_backend_stats")
        let object = try spec.load()
        defer { object.close() }
        services = try object.map("lb_services").typed(key: strait_lb_service_key.self, value: strait_lb_service.self)
        tables = try object.map("lb_tables").typed(key: UInt32.self, value: strait_lb_table.self)
        backends = try object.map("lb_backends").typed(key: UInt32.self, value: strait_lb_backend.self)
        backendStats = try object.map("lb_backend_stats").typed(key: UInt32.self, value: strait_lb_backend_stats.self)
        counters = try object.map("lb_counters").typed(key: UInt32.self, value: UInt64.self)
        if let pinDirectory {
            let folder = LBPersistence.folder(pinDirectory)
            try folder.removeAll()
            try folder.populate(object: object, maps: persistence == nil ? Self.pinnedMapNames : Self.persistentMapNames, programs: [])
        }
        var links: [BPFLink] = []
        do {
            for (name, hook) in Self.programs {
                let link = try object.program(name).attach(cgroup: cgroup, as: hook)
                links.append(link)
                if let persistence { try link.pin(at: persistence.linkPath(name)) }
            }
        } catch {
            for link in links { try? link.close() }
            if let pinDirectory { try? LBPersistence.folder(pinDirectory).removeAll() }
            throw error
        }
        self.links = links
    }

    /// Opens the persistent balancer `persistence` holds on `cgroup`, or returns nil when there is
    /// none to adopt: no record, pins missing, or links attached elsewhere (the caller then makes a
    /// new one, which clears what is left). Nothing in the kernel is changed here.
    public static func adopt(cgroup: Cgroup, persistence: LBPersistence) -> LoadBalancer? {
        guard let data = FileManager.default.contents(atPath: persistence.recordFile),
              let record = try? JSONDecoder().decode(Record.self, from: data), record.cgroup == cgroup.path,
              let cgroupID = cgroup.inode() else { return nil }
        let folder = LBPersistence.folder(persistence.pinDirectory)
        guard folder.contains(persistentMapNames), let object = try? PinnedMaps(folder: folder) else { return nil }
        var links: [BPFLink] = []
        for (name, _) in programs {
            guard let link = try? BPFLink.open(pinned: persistence.linkPath(name)), (try? link.cgroupID()) == cgroupID else { return nil }
            links.append(link)
        }
        return LoadBalancer(cgroup: cgroup, record: record, maps: object, links: links, persistence: persistence)
    }

    /// The maps of a persistent balancer, opened from their pins.
    private struct PinnedMaps {
        let services: TypedMap<strait_lb_service_key, strait_lb_service>
        let tables: TypedMap<UInt32, strait_lb_table>
        let backends: TypedMap<UInt32, strait_lb_backend>
        let backendStats: TypedMap<UInt32, strait_lb_backend_stats>
        let counters: TypedMap<UInt32, UInt64>

        init(folder: PinFolder) throws(BPFError) {
            services = try folder.map("lb_services").typed(key: strait_lb_service_key.self, value: strait_lb_service.self)
            tables = try folder.map("lb_tables").typed(key: UInt32.self, value: strait_lb_table.self)
            backends = try folder.map("lb_backends").typed(key: UInt32.self, value: strait_lb_backend.self)
            backendStats = try folder.map("lb_backend_stats").typed(key: UInt32.self, value: strait_lb_backend_stats.self)
            counters = try folder.map("lb_counters").typed(key: UInt32.self, value: UInt64.self)
        }
    }

    private init(cgroup: Cgroup, record: Record, maps: PinnedMaps, links: [BPFLink], persistence: LBPersistence) {
        self.cgroup = cgroup
        capacity = record.capacity
        pinDirectory = persistence.pinDirectory
        self.persistence = persistence
        self.links = links
        services = maps.services
        tables = maps.tables
        backends = maps.backends
        backendStats = maps.backendStats
        counters = maps.counters
        for service in record.services {
            guard let identity = service.identity.service else { continue }
            // Names and backends come back with the next apply; until then only the kernel's view is known.
            let config = LBServiceConfig(name: "", address: identity.address, port: identity.port, transport: identity.transport, policy: service.policy, backends: [])
            installed[identity] = Installed(
                slot: service.slot, table: service.table, contents: service.contents, policy: service.policy, config: config,
                backendIDs: [], down: [], weights: service.weights)
        }
        for backend in record.backends {
            if let identity = backend.identity { backendIDs[identity] = backend.id }
        }
        nextBackendID = record.nextBackendID
        nextSlot = record.nextSlot
        freeSlots = record.freeSlots
        retiredBackends = record.retiredBackends
    }

    /// Writes the record a later ``adopt(cgroup:persistence:)`` reads (atomically). Lock held.
    private func writeRecord() throws {
        guard let persistence else { return }
        let record = Record(
            cgroup: cgroup.path, capacity: capacity,
            services: installed.map { identity, entry in
                Record.Service(identity: Record.Endpoint(identity), slot: entry.slot, table: entry.table, contents: entry.contents, policy: entry.policy, weights: entry.weights)
            },
            backends: backendIDs.map { identity, id in
                Record.Backend(service: Record.Endpoint(identity.service), backend: Record.Endpoint(identity.address, identity.port, identity.service.transport), id: id)
            },
            nextBackendID: nextBackendID, nextSlot: nextSlot, freeSlots: freeSlots, retiredBackends: retiredBackends)
        try FileManager.default.createDirectory(atPath: (persistence.recordFile as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try JSONEncoder().encode(record).write(to: URL(fileURLWithPath: persistence.recordFile), options: .atomic)
    }

    deinit { close() }

    /// Releases the links and maps. A balancer that is not persistent detaches every program and
    /// removes its counter pins; a persistent one stays attached through its pins (remove it with
    /// ``LBPersistence/remove()``). The maps go with the last descriptor.
    public func close() {
        lock.withLock {
            for link in links { try? link.close() }
            links = []
            if let pinDirectory, persistence == nil { try? BPFFS.removeTree(pinDirectory) }
        }
    }

    /// How the kernel differs from what the last ``apply(_:down:)`` installed (empty: it matches):
    /// a link detached or gone from the cgroup, a service missing from `lb_services` or holding
    /// another table. One map lookup per service and one link query per program.
    public func kernelDifferences() -> [String] {
        lock.withLock {
            var differences: [String] = []
            let cgroupID = cgroup.inode()
            for (link, program) in zip(links, Self.programs) where (try? link.cgroupID()) != cgroupID {
                differences.append("lb: \(program.name) is no longer attached to \(cgroup.path)")
            }
            for (identity, entry) in installed.sorted(by: { $0.value.slot < $1.value.slot }) {
                guard let value = try? services.lookup(Self.serviceKey(identity)) else {
                    differences.append("lb: service \(entry.config.name) (\(entry.config.endpoint)) is missing from the kernel")
                    continue
                }
                if value.slot != entry.slot || (value.live != 0 && value.table != entry.table) {
                    differences.append("lb: service \(entry.config.name) (\(entry.config.endpoint)) reads another table than the one written")
                }
            }
            return differences
        }
    }

    /// Makes the kernel balance exactly `configs`, with the backends in `down` left out of every
    /// table (a service whose backends are all down refuses connects with ECONNREFUSED).
    /// Services and backends not named any more are removed. Safe while traffic flows and from
    /// any thread; see the type's documentation for why no connect sees a half-made change.
    ///
    /// Returns how many services the kernel had to change (added, removed, or given a new table):
    /// 0 when it already held exactly this.
    @discardableResult
    public func apply(_ configs: [LBServiceConfig], down: Set<LBBackendRef> = []) throws -> Int {
        guard configs.count <= capacity else { throw LBError.tooManyServices(count: configs.count, capacity: capacity) }
        return try lock.withLock { () throws -> Int in
            var changed = 0
            // Entries unreferenced since the previous apply: no connect can be reading them now.
            for id in retiredBackends {
                _ = try backends.delete(id)
                _ = try backendStats.delete(id)
            }
            retiredBackends = []
            var wanted: Set<ServiceIdentity> = []
            var referenced: Set<UInt32> = []
            for config in configs {
                let identity = ServiceIdentity(address: config.address, port: config.port, transport: config.transport)
                wanted.insert(identity)
                var entry = installed[identity] ?? Installed(
                    slot: allocateSlot(), table: 1, contents: nil, policy: config.policy, config: config, backendIDs: [], down: [], weights: [:])
                var ids: [UInt32] = []
                var members: [Maglev.Member] = []
                var downHere: Set<LBBackendConfig> = []
                for backend in config.backends {
                    let id = try backendID(BackendIdentity(service: identity, address: backend.address, port: backend.port), backend)
                    ids.append(id)
                    referenced.insert(id)
                    if down.contains(LBBackendRef(service: config.name, backend: backend.endpoint)) {
                        downHere.insert(backend)
                    } else {
                        members.append(Maglev.Member(id: id, weight: backend.weight))
                    }
                }
                var table = LBTable.build(members, policy: config.policy)
                let weights = Dictionary(uniqueKeysWithValues: members.map { ($0.id, $0.weight) })
                if config.policy == .maglev, entry.policy == .maglev, let previous = entry.contents, !previous.isEmpty, !table.isEmpty,
                   weights.allSatisfy({ entry.weights[$0.key] == $0.value }) {
                    // Only leavers: keep every live owner in place, so only the leavers' sockets move.
                    table = LBTable.shrink(previous, fresh: table, live: Set(weights.keys))
                }
                if entry.contents != table || entry.policy != config.policy {
                    changed += 1
                    let key = Self.serviceKey(identity)
                    if table.isEmpty {
                        try services.update(key, strait_lb_service(slot: entry.slot, table: entry.table, live: 0, policy: config.policy.kernelValue))
                    } else {
                        let standby = 1 - entry.table
                        try tables.update(entry.slot * 2 + standby, Self.kernelTable(table))
                        // The flip: one write, after the standby table is complete.
                        try services.update(key, strait_lb_service(slot: entry.slot, table: standby, live: UInt32(members.count), policy: config.policy.kernelValue))
                        entry.table = standby
                    }
                    entry.contents = table
                    entry.policy = config.policy
                }
                entry.weights = weights
                entry.config = config
                entry.backendIDs = ids
                entry.down = downHere
                installed[identity] = entry
            }
            var released: [UInt32] = []
            for (identity, entry) in installed where !wanted.contains(identity) {
                _ = try services.delete(Self.serviceKey(identity))
                _ = try tables.delete(entry.slot * 2)
                _ = try tables.delete(entry.slot * 2 + 1)
                released.append(entry.slot)
                installed[identity] = nil
                changed += 1
            }
            freeSlots += released
            for (identity, id) in backendIDs where !referenced.contains(id) {
                backendIDs[identity] = nil
                retiredBackends.append(id)
            }
            try writeRecord()
            return changed
        }
    }

    /// What the kernel holds now, in configuration order of the last apply, with the connects and
    /// datagrams each backend received (summed over CPUs).
    public func snapshot() throws -> LBSnapshot {
        try lock.withLock { () throws in
            var services: [LBSnapshot.Service] = []
            for entry in installed.values.sorted(by: { $0.slot < $1.slot }) {
                var backends: [LBSnapshot.Backend] = []
                for (backend, id) in zip(entry.config.backends, entry.backendIDs) {
                    let stats = try backendStats.summedOverCPUs(id)
                    backends.append(LBSnapshot.Backend(
                        id: id, endpoint: backend.endpoint, weight: backend.weight, up: !entry.down.contains(backend),
                        connects: stats.connects, datagrams: stats.datagrams))
                }
                services.append(LBSnapshot.Service(
                    name: entry.config.name, endpoint: entry.config.endpoint, policy: entry.config.policy,
                    healthChecked: entry.config.healthCheck != nil, backends: backends))
            }
            return LBSnapshot(cgroup: cgroup.path, services: services, counters: try kernelCounters())
        }
    }

    /// The program's counters, summed over CPUs.
    func kernelCounters() throws(BPFError) -> LBSnapshot.Counters {
        LBSnapshot.Counters(
            balanced: try counters.summedOverCPUs(UInt32(STRAIT_LB_BALANCED.rawValue)),
            refused: try counters.summedOverCPUs(UInt32(STRAIT_LB_REFUSED.rawValue)),
            reversed: try counters.summedOverCPUs(UInt32(STRAIT_LB_REVERSED.rawValue)))
    }

    /// The table a service uses now (backend ids per entry), or nil for an unknown service: what
    /// a test predicts placement from.
    public func table(service name: String) -> [UInt32]? {
        lock.withLock { installed.values.first { $0.config.name == name }?.contents }
    }

    private func allocateSlot() -> UInt32 {
        if let slot = freeSlots.popLast() { return slot }
        defer { nextSlot += 1 }
        return nextSlot
    }

    private func backendID(_ identity: BackendIdentity, _ backend: LBBackendConfig) throws(BPFError) -> UInt32 {
        if let id = backendIDs[identity] { return id }
        let id = nextBackendID
        nextBackendID += 1
        var value = strait_lb_backend()
        withUnsafeMutableBytes(of: &value.addr) { $0.copyBytes(from: backend.address.ipv6Mapped) }
        value.port = backend.port.bigEndian
        try backends.update(id, value)
        backendIDs[identity] = id
        return id
    }

    private static func serviceKey(_ identity: ServiceIdentity) -> strait_lb_service_key {
        var key = strait_lb_service_key()
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: identity.address.ipv6Mapped) }
        key.port = identity.port.bigEndian
        key.protocol = identity.transport.number
        return key
    }

    private static func kernelTable(_ entries: [UInt32]) -> strait_lb_table {
        var table = strait_lb_table()
        withUnsafeMutableBytes(of: &table.backends) { raw in
            entries.withUnsafeBytes { raw.copyMemory(from: $0) }
        }
        return table
    }
}

/// A backend of a named service, as health checks and `down` sets name it.
public struct LBBackendRef: Hashable, Sendable {
    /// The service's configured name.
    public var service: String
    /// `address:port` as ``LBBackendConfig/endpoint`` writes it.
    public var backend: String

    /// A reference by names; whether they exist is checked where it is used.
    public init(service: String, backend: String) {
        self.service = service
        self.backend = backend
    }
}

extension LBPolicy {
    var kernelValue: UInt32 { self == .maglev ? UInt32(STRAIT_LB_MAGLEV.rawValue) : UInt32(STRAIT_LB_RANDOM.rawValue) }
}

/// Where a persistent ``LoadBalancer`` keeps what outlives its process: its pins (every map, and
/// one link per program under `links/`) and the JSON record of its bookkeeping. A plain value; the
/// kernel objects belong to their pins.
public struct LBPersistence: Sendable, Equatable {
    /// The bpffs folder; `strait lb status --pin-directory` reads the counters there.
    public var pinDirectory: String
    /// The record (under /run, so that like bpffs it is gone after a reboot).
    public var recordFile: String

    /// Pins under `pinDirectory`, the record at `recordFile`.
    public init(pinDirectory: String, recordFile: String) {
        self.pinDirectory = pinDirectory
        self.recordFile = recordFile
    }

    static func folder(_ pinDirectory: String) -> PinFolder {
        PinFolder(path: pinDirectory, repairAdvice: "Stop strait lb (or the agent), remove \(pinDirectory), then start again.")
    }

    func linkPath(_ program: String) -> String { Self.folder(pinDirectory).linksPath + "/" + program }

    /// Whether a persistent balancer's links are pinned here.
    public var exists: Bool { !Self.folder(pinDirectory).linkNames().isEmpty }

    /// Detaches every program, unpins everything and deletes the record; nothing there is fine.
    public func remove() throws {
        try Self.folder(pinDirectory).removeAll()
        try? FileManager.default.removeItem(atPath: recordFile)
    }
}

extension Cgroup {
    /// The cgroup's id (its directory's inode number, which links report), or nil if it has gone.
    func inode() -> UInt64? {
        var info = stat()
        return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
    }
}
