import StraitKernelABI

/// What `strait accel status` reports.
public struct AccelStatus: Sendable, Codable {
    public var enabled: Bool
    public var pinDirectory: String
    public var cgroup: String?
    public var policy: AccelPolicy?
    public var socketsTracked: Int
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
        public var socketsEntered: UInt64 = 0
        public var socketsSkippedByPolicy: UInt64 = 0
        public var socketsReleasedToStack: UInt64 = 0
        public var redirectedMessages: UInt64 = 0
        public var redirectedBytes: UInt64 = 0
        public var fallbackPeerNotTracked = Fallback()
        public var fallbackStack = Fallback()
        public var fallbackDisabled = Fallback()
        public var eventsDropped: UInt64 = 0

        /// Sends that went through the normal stack, for one reason.
        public struct Fallback: Sendable, Codable {
            public var messages: UInt64 = 0
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
