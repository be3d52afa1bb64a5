import CLibBPF
import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

/// Same-host TCP acceleration: a `sock_ops` program on a cgroup records established sockets in a
/// SOCKHASH; an `sk_msg` program on that hash sends each message straight into the peer socket's
/// ingress queue, skipping TCP/IP and loopback.
///
/// Everything lives pinned under ``pinDirectory`` (default `/sys/fs/bpf/strait/accel`), so
/// acceleration stays on after the command that enabled it exits, and every later command opens
/// the same maps. An `Accelerator` value holds descriptors to those pins; dropping it changes nothing.
public final class Accelerator {
    /// Where everything is pinned unless told otherwise: `/sys/fs/bpf/strait/accel`.
    public static let defaultPinDirectory = BPFFS.defaultMount + "/strait/accel"

    /// The bpffs folder holding the programs, maps and links; they outlive this object and the
    /// process.
    public let pinDirectory: String
    let socks: TypedMap<strait_sock_key, UInt64>
    let config: TypedMap<UInt32, strait_accel_config>
    let ports: TypedMap<UInt16, UInt8>
    let excludePorts: TypedMap<UInt16, UInt8>
    let cidrs: TypedMap<strait_lpm_key, UInt8>
    let stats: TypedMap<UInt32, strait_accel_counters>
    let events: BPFMap
    let bypassPorts: TypedMap<UInt16, UInt8>
    let calibrationRecord: TypedMap<UInt32, strait_accel_calibration>

    enum Pin: String, CaseIterable {
        case socks, config, ports, cidrs, stats, inbound, events, calibration
        case excludePorts = "exclude_ports"
        case bypassPorts = "bypass_ports"
        case sockState = "sock_state"
        case sockopsProgram = "prog_sockops", messageProgram = "prog_msg"
        case sockopsLink = "link_sockops", messageLink = "link_msg"
    }

    static func path(_ pin: Pin, in directory: String) -> String { directory + "/" + pin.rawValue }

    private init(pinDirectory: String) throws(BPFError) {
        self.pinDirectory = pinDirectory
        func open(_ pin: Pin) throws(BPFError) -> BPFMap {
            let path = Self.path(pin, in: pinDirectory)
            guard BPFFS.exists(path) else {
                throw .unsupported("\(path) is missing: acceleration was enabled by another version of Strait. Run `strait accel disable`, then enable again.")
            }
            return try BPFMap.open(pinned: path)
        }
        socks = try open(.socks).typed(key: strait_sock_key.self, value: UInt64.self)
        config = try open(.config).typed(key: UInt32.self, value: strait_accel_config.self)
        ports = try open(.ports).typed(key: UInt16.self, value: UInt8.self)
        excludePorts = try open(.excludePorts).typed(key: UInt16.self, value: UInt8.self)
        cidrs = try open(.cidrs).typed(key: strait_lpm_key.self, value: UInt8.self)
        stats = try open(.stats).typed(key: UInt32.self, value: strait_accel_counters.self)
        events = try open(.events)
        bypassPorts = try open(.bypassPorts).typed(key: UInt16.self, value: UInt8.self)
        calibrationRecord = try open(.calibration).typed(key: UInt32.self, value: strait_accel_calibration.self)
    }

    /// Whether acceleration is enabled (its links are pinned) under `pinDirectory`.
    public static func isEnabled(pinDirectory: String = defaultPinDirectory) -> Bool {
        BPFFS.exists(path(.sockopsLink, in: pinDirectory)) && BPFFS.exists(path(.messageLink, in: pinDirectory))
    }

    /// Opens an enabled accelerator's pins.
    public static func open(pinDirectory: String = defaultPinDirectory) throws -> Accelerator {
        guard isEnabled(pinDirectory: pinDirectory) else { throw AccelError.notEnabled(pinDirectory) }
        return try Accelerator(pinDirectory: pinDirectory)
    }

    /// Loads the programs, pins them with their maps, measures this machine (``AccelCalibration``,
    /// about 4 s, before anything is attached) unless `calibration` is nil or the policy's bulk
    /// decision is by hand, attaches `sock_ops` to `cgroup` and `sk_msg` to the socket hash, and
    /// returns. Idempotent: when already enabled on the same cgroup it only applies `policy` (the
    /// calibration in force stays; ``calibrate(plan:)`` measures again). Sockets established before
    /// this call are not accelerated.
    public static func enable(
        cgroup: Cgroup, policy: AccelPolicy = AccelPolicy(), pinDirectory: String = defaultPinDirectory,
        calibration: AccelCalibration.Plan? = AccelCalibration.Plan()
    ) throws -> Accelerator {
        let prefixes = try policy.parsedCIDRs()
        if isEnabled(pinDirectory: pinDirectory) {
            let accelerator = try Accelerator(pinDirectory: pinDirectory)
            let current = try accelerator.cgroup()
            guard let current, (try? current.canonical().path) ?? current.path == (try? cgroup.canonical().path) ?? cgroup.path else {
                throw AccelError.enabledElsewhere(current: current.map(\.path) ?? "(unknown)", requested: cgroup.path)
            }
            try accelerator.apply(policy, prefixes: prefixes, redirect: true)
            return accelerator
        }
        try BPFFS.ensureMounted()
        // A half-made earlier attempt (crash between pins) is cleared first.
        try BPFFS.removeTree(pinDirectory)
        try BPFFS.makeDirectory(pinDirectory)
        do {
            let object = try BPFObjectSpec(embedded: .accel).load()
            for pin in [Pin.socks, .config, .ports, .excludePorts, .bypassPorts, .cidrs, .stats, .inbound, .sockState, .events, .calibration] {
                try object.map(pin.rawValue).pin(at: path(pin, in: pinDirectory))
            }
            let sockops = try object.program("strait_accel_sockops")
            let message = try object.program("strait_accel_msg")
            try sockops.pin(at: path(.sockopsProgram, in: pinDirectory))
            try message.pin(at: path(.messageProgram, in: pinDirectory))

            let accelerator = try Accelerator(pinDirectory: pinDirectory)
            if let calibration, policy.bulkDecision == .calibrated {
                try accelerator.store(try measureCalibration(plan: calibration))
            }
            try accelerator.apply(policy, prefixes: prefixes, redirect: true)
            // sk_msg first, so no socket enters the hash before its send hook is there.
            let messageLink = try message.attach(sockmap: accelerator.socks.map, as: .messageVerdict)
            try messageLink.pin(at: path(.messageLink, in: pinDirectory))
            let sockopsLink = try sockops.attach(cgroup: cgroup)
            try sockopsLink.pin(at: path(.sockopsLink, in: pinDirectory))
            return accelerator
        } catch {
            try? BPFFS.removeTree(pinDirectory)
            throw error
        }
    }

    /// The bulk sizes that redirect now (adaptive mode), from the config map: the calibration's
    /// answer, or every size from `bulkBytes` up when the decision is by hand.
    public func redirectedBulkSizes() throws -> [Range<Int>] {
        let configuration = try config.lookup(0) ?? strait_accel_config()
        return AccelCalibration.redirectedRanges(sizeClasses: configuration.redirect_size_classes, bulkBytes: configuration.bulk_bytes)
    }

    /// The small-write sizes (under `bulkBytes`) whose streams keep redirecting now (adaptive
    /// mode), from the config map: the calibration's answer, or none when the bulk decision is by
    /// hand or nothing was measured. Request/response directions redirect whatever this says.
    public func redirectedStreamSizes() throws -> [Range<Int>] {
        let configuration = try config.lookup(0) ?? strait_accel_config()
        return AccelCalibration.redirectedStreamRanges(sizeClasses: configuration.stream_size_classes, bulkBytes: configuration.bulk_bytes)
    }

    /// The current policy, read back from the maps.
    public func policy() throws -> AccelPolicy {
        let configuration = try config.lookup(0) ?? strait_accel_config()
        let portList = try ports.keys()
        let prefixes = try cidrs.keys().map { key -> String in
            let address = IPAddress(ipv6Mapped: withUnsafeBytes(of: key.addr) { Array($0) })
            let length = address.isIPv4 ? Int(key.prefixlen) - 96 : Int(key.prefixlen)
            return IPPrefix(address: address, length: length).description
        }
        return AccelPolicy(config: configuration, ports: portList, excludePorts: try excludePorts.keys(), cidrs: prefixes)
    }

    /// Replaces the policy while enabled. New sockets follow it at once; established ones keep the
    /// decision made when they were established.
    public func setPolicy(_ policy: AccelPolicy) throws {
        let redirecting = try config.lookup(0).map { $0.flags & STRAIT_ACCEL_REDIRECT.rawValue != 0 } ?? true
        try apply(policy, prefixes: try policy.parsedCIDRs(), redirect: redirecting)
    }

    private func apply(_ policy: AccelPolicy, prefixes: [IPPrefix], redirect: Bool) throws {
        // Add new entries before removing old ones and before the flags switch filtering on, so
        // no socket is wrongly skipped while the policy changes.
        for port in policy.ports { try ports.update(port, 1) }
        for port in policy.excludePorts { try excludePorts.update(port, 1) }
        let wanted = prefixes.map(Self.lpmKey)
        for key in wanted { try cidrs.update(key, 1) }
        try config.update(0, policy.config(redirect: redirect, calibratedSizeClasses: try calibratedSizeClasses()))
        for port in try ports.keys() where !policy.ports.contains(port) { try ports.delete(port) }
        for port in try excludePorts.keys() where !policy.excludePorts.contains(port) { try excludePorts.delete(port) }
        for key in try cidrs.keys() where !wanted.contains(where: { Self.same($0, key) }) { try cidrs.delete(key) }
    }

    static func lpmKey(_ prefix: IPPrefix) -> strait_lpm_key {
        var key = strait_lpm_key()
        key.prefixlen = UInt32(prefix.ipv6MappedLength)
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: prefix.address.ipv6Mapped) }
        return key
    }

    static func same(_ a: strait_lpm_key, _ b: strait_lpm_key) -> Bool {
        a.prefixlen == b.prefixlen && withUnsafeBytes(of: a.addr) { x in withUnsafeBytes(of: b.addr) { y in x.elementsEqual(y) } }
    }

    /// The cgroup the `sock_ops` link is attached to, found by its id (the directory's inode).
    public func cgroup() throws -> Cgroup? {
        let link = try BPFLink.open(pinned: Self.path(.sockopsLink, in: pinDirectory))
        guard let id = try link.cgroupID() else { return nil }
        return Cgroup.find(id: id)
    }

    /// Counters summed over CPUs.
    public func counters() throws -> strait_accel_counters {
        try stats.summedOverCPUs(0)
    }

    /// The sockets in the hash now.
    public func trackedSockets() throws -> [strait_sock_key] {
        try socks.keys()
    }
}
