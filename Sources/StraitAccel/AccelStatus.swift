import StraitKernelABI

/// What `strait accel status` reports.
public struct AccelStatus: Sendable, Codable {
    /// Whether anything is pinned under ``pinDirectory``; when false every other field is empty or
    /// zero.
    public var enabled: Bool
    /// The bpffs folder the programs, maps and links are pinned in.
    public var pinDirectory: String
    /// The cgroup v2 path the sock_ops program is attached to; nil when off or when that cgroup has
    /// gone.
    public var cgroup: String?
    /// The policy now in the config maps; nil when off.
    public var policy: AccelPolicy?
    /// Sockets in the SOCKHASH now (one map walk when the status is read).
    public var socketsTracked: Int
    /// Totals since the maps were created.
    public var counters: Counters
    /// The measurement in force (nil when none was made: `--no-calibrate`, or bulk set by hand).
    public var calibration: AccelCalibration?
    /// Bulk send sizes (from ``AccelPolicy/bulkBytes`` up) that redirect now; the others go to the
    /// stack. Upper bound `Int.max`: and larger.
    public var redirectedBulkSizes: [Range<Int>]
    /// Small-write sizes (under ``AccelPolicy/bulkBytes``) whose streams keep redirecting now; the
    /// others go to the stack after ``AccelPolicy/probeSends``. Empty by hand or when not calibrated.
    public var redirectedStreamSizes: [Range<Int>]

    /// The per-CPU counters, summed.
    public struct Counters: Sendable, Codable {
        /// Established sockets that passed the policy and entered the socket hash.
        public var socketsEntered: UInt64 = 0
        /// Established sockets the policy (ports, excluded ports, prefixes) left out.
        public var socketsSkippedByPolicy: UInt64 = 0
        /// Tracked sockets taken out of the hash again once their sends had settled on the stack
        /// (their flows continue there).
        public var socketsReleasedToStack: UInt64 = 0
        /// Sends delivered straight into the peer's ingress queue by sk_msg redirect.
        public var redirectedMessages: UInt64 = 0
        /// Bytes of those sends.
        public var redirectedBytes: UInt64 = 0
        /// Sends that went to the stack because the peer socket was not (or no longer) in the hash;
        /// that direction stays on the stack.
        public var fallbackPeerNotTracked = Fallback()
        /// Sends that went to the stack because the direction had settled there (adaptive mode, or
        /// the calibration said so).
        public var fallbackStack = Fallback()
        /// Sends that went to the stack because redirect was switched off while the socket was
        /// tracked.
        public var fallbackDisabled = Fallback()
        /// Events lost because the ring buffer was full (a slow or absent `strait accel trace`
        /// reader costs nothing else).
        public var eventsDropped: UInt64 = 0

        /// Sends that went through the normal stack, for one reason.
        public struct Fallback: Sendable, Codable {
            /// Sends counted.
            public var messages: UInt64 = 0
            /// Their bytes.
            public var bytes: UInt64 = 0
        }

        init() {}

        init(_ c: strait_accel_counters) {
            socketsEntered = c.sockets_tracked
            socketsSkippedByPolicy = c.sockets_skipped_policy
            socketsReleasedToStack = c.sockets_released
            redirectedMessages = c.redirected_messages
            redirectedBytes = c.redirected_bytes
            fallbackPeerNotTracked = Fallback(messages: c.fallback_no_peer_messages, bytes: c.fallback_no_peer_bytes)
            fallbackStack = Fallback(messages: c.fallback_stack_messages, bytes: c.fallback_stack_bytes)
            fallbackDisabled = Fallback(messages: c.fallback_disabled_messages, bytes: c.fallback_disabled_bytes)
            eventsDropped = c.events_dropped
        }
    }
}

extension Accelerator {
    /// Status of the accelerator pinned under `pinDirectory`; `enabled: false` when nothing is pinned.
    public static func status(pinDirectory: String = defaultPinDirectory) throws -> AccelStatus {
        guard isEnabled(pinDirectory: pinDirectory) else {
            return AccelStatus(
                enabled: false, pinDirectory: pinDirectory, cgroup: nil, policy: nil, socketsTracked: 0, counters: .init(),
                calibration: nil, redirectedBulkSizes: [], redirectedStreamSizes: [])
        }
        let accelerator = try open(pinDirectory: pinDirectory)
        return AccelStatus(
            enabled: true, pinDirectory: pinDirectory,
            cgroup: try accelerator.cgroup()?.path,
            policy: try accelerator.policy(),
            socketsTracked: try accelerator.trackedSockets().count,
            counters: .init(try accelerator.counters()),
            calibration: try accelerator.calibration(),
            redirectedBulkSizes: try accelerator.redirectedBulkSizes(), redirectedStreamSizes: try accelerator.redirectedStreamSizes())
    }
}
