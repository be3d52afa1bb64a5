import StraitKernelABI
import StraitSystem

/// Which sockets Strait accelerates and how it decides per direction. Lives in maps, so it can
/// change while acceleration is on without reloading a program.
public struct AccelPolicy: Sendable, Equatable, Codable {
    /// Track only sockets whose local or remote port is listed; empty means every port.
    public var ports: [UInt16] = []
    /// Never track sockets with one of these local or remote ports: services whose receivers use
    /// splice(2), which cannot read redirected bytes (tcp_bpf has no splice_read).
    public var excludePorts: [UInt16] = []
    /// Track only sockets whose remote address is in one of these prefixes; empty means any address.
    public var cidrs: [String] = []
    /// Adaptive (default): each direction keeps redirecting only if it sends bulk of a size the
    /// calibration found faster redirected (see ``bulkBytes``), alternates sends with receives, or
    /// streams small writes of a size the calibration found faster redirected; other directions go
    /// back to the stack, where TCP batches small writes better. Off: every direction redirects
    /// from its first send.
    public var adaptive: Bool = true
    /// A send of at least this many bytes is bulk: it settles its direction, on redirect or on the
    /// stack as ``bulkDecision`` says.
    public var bulkBytes: UInt32 = 16384
    /// Who decides whether a bulk send redirects. Default ``BulkDecision/calibrated``.
    public var bulkDecision: BulkDecision = .calibrated
    /// Sends after which a direction with neither bulk nor request/response traffic settles: on the
    /// stack, unless the calibration measured streams of writes of that size faster redirected.
    public var probeSends: UInt32 = 32
    /// Sends that follow a receive (request/response) after which a direction keeps redirecting.
    public var idleSends: UInt32 = 3

    /// The default policy: every port and address, adaptive, calibrated bulk decision from 16 KiB.
    public init() {}

    /// Whether bulk sends redirect by this machine's measurement or by hand.
    public enum BulkDecision: String, Sendable, Codable {
        /// By the calibration in force (``AccelCalibration``): only bulk sizes measured faster
        /// redirected on this machine redirect; the others go to the stack. Until something was
        /// measured, every bulk send redirects.
        case calibrated
        /// Every send of at least ``AccelPolicy/bulkBytes`` redirects, whatever was measured: what
        /// `--bulk-bytes` sets, for an operator who knows better or a test that needs one path.
        case byHand = "by-hand"
    }

    /// Parses the CIDR strings, naming the first bad one.
    public func parsedCIDRs() throws(AccelError) -> [IPPrefix] {
        try cidrs.map { (text: String) throws(AccelError) -> IPPrefix in
            guard let prefix = IPPrefix(text) else { throw AccelError.badPolicy("'\(text)' is not an address prefix such as 127.0.0.0/8 or ::1/128") }
            return prefix
        }
    }

    /// The config map's value. `calibratedSizeClasses` is the calibration's mask (nil when nothing
    /// was measured), used for bulk sends and for streams of small writes unless the bulk decision
    /// is by hand. By hand, or unmeasured: every bulk size redirects and every small-write stream
    /// goes to the stack.
    func config(redirect: Bool, calibratedSizeClasses: UInt32?) -> strait_accel_config {
        var flags: UInt32 = 0
        if redirect { flags |= STRAIT_ACCEL_REDIRECT.rawValue }
        if !ports.isEmpty { flags |= STRAIT_ACCEL_PORT_FILTER.rawValue }
        if !cidrs.isEmpty { flags |= STRAIT_ACCEL_CIDR_FILTER.rawValue }
        if adaptive { flags |= STRAIT_ACCEL_ADAPTIVE.rawValue }
        if bulkDecision == .byHand { flags |= STRAIT_ACCEL_BULK_BY_HAND.rawValue }
        return strait_accel_config(
            flags: flags, bulk_bytes: bulkBytes, probe_sends: probeSends, idle_sends: idleSends,
            redirect_size_classes: bulkDecision == .byHand ? .max : calibratedSizeClasses ?? .max,
            stream_size_classes: bulkDecision == .byHand ? 0 : calibratedSizeClasses ?? 0)
    }

    init(config: strait_accel_config, ports: [UInt16], excludePorts: [UInt16], cidrs: [String]) {
        self.ports = ports.sorted()
        self.excludePorts = excludePorts.sorted()
        self.cidrs = cidrs.sorted()
        adaptive = config.flags & STRAIT_ACCEL_ADAPTIVE.rawValue != 0
        bulkBytes = config.bulk_bytes
        bulkDecision = config.flags & STRAIT_ACCEL_BULK_BY_HAND.rawValue != 0 ? .byHand : .calibrated
        probeSends = config.probe_sends
        idleSends = config.idle_sends
    }
}

/// What went wrong in `strait accel`, and what to do.
public enum AccelError: Error, CustomStringConvertible {
    case badPolicy(String)
    case notEnabled(String)
    case enabledElsewhere(current: String, requested: String)
    case calibrationFailed(String)

    /// What went wrong and what to do, for the operator; the CLI prints it as is.
    public var description: String {
        switch self {
        case .badPolicy(let why): "bad acceleration policy: \(why)"
        case .notEnabled(let directory): "acceleration is not enabled (nothing pinned at \(directory)): run `strait accel enable` first"
        case .calibrationFailed(let why):
            "calibration failed: \(why). Enable with --no-calibrate (bulk sends then redirect as set by --bulk-bytes), or retry on a less loaded machine"
        case .enabledElsewhere(let current, let requested):
            "acceleration is already enabled on cgroup \(current), not \(requested): run `strait accel disable` first, or enable with --cgroup \(current)"
        }
    }
}
