import Foundation
import StraitBPF
import StraitSystem

/// Decides whether tests that need the real kernel (BPF, cgroups, namespaces) run.
///
/// Outside CI they are skipped, with the reason, when this process lacks root or the kernel lacks
/// cgroup v2. Under `CI=true` they always run, so a machine that cannot run them fails loudly
/// instead of passing by skipping.
public enum KernelTestGate {
    public static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Why kernel tests cannot run here, or nil when they can.
    public static let missing: String? = {
        if geteuid() != 0 { return "needs root (BPF, cgroups and namespaces); run the tests with sudo" }
        if Cgroup.v2MountPoint() == nil { return "needs a cgroup v2 mount" }
        return nil
    }()

    /// Use as `.enabled(if: KernelTestGate.enabled, KernelTestGate.comment)`.
    public static var enabled: Bool { isCI || missing == nil }
    public static var comment: String { missing.map { "skipped outside CI: \($0)" } ?? "kernel test" }
}
