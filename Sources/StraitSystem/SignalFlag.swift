import Atomics

#if canImport(Glibc)
import Glibc
#endif

/// A flag raised by SIGINT/SIGTERM, for loops that poll and must end cleanly (so teardown runs)
/// instead of dying mid-way.
public final class SignalFlag: Sendable {
    private static let raised = ManagedAtomic<Bool>(false)

    private init() {}

    /// Installs handlers for SIGINT and SIGTERM that raise the flag.
    public static func interrupt() -> SignalFlag {
        signal(SIGINT) { _ in SignalFlag.raised.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in SignalFlag.raised.store(true, ordering: .relaxed) }
        return SignalFlag()
    }

    /// Whether SIGINT or SIGTERM has arrived since ``interrupt()`` (one relaxed atomic load).
    public var isRaised: Bool { Self.raised.load(ordering: .relaxed) }
}
