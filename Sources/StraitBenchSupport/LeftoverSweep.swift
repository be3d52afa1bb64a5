import Foundation
import StraitBPF
import StraitSystem

/// Removes kernel objects left by test or benchmark processes that died before their teardown
/// (a crash skips `defer`): cgroups, pin folders and network namespaces whose names carry the PID
/// of a process that no longer exists. Objects of live processes are never touched.
public enum LeftoverSweep {
    static let prefixes = ["strait-test-", "strait-bench-", "strait-ns-"]

    /// Runs once per process; cheap afterwards.
    public static let once: Void = sweep()

    static func ownerIsDead(_ name: String) -> Bool {
        guard let prefix = prefixes.first(where: { name.hasPrefix($0) }),
            let pid = Int32(name.dropFirst(prefix.count).split(separator: "-").first ?? "")
        else { return false }
        return !ProcessCall.isAlive(pid)
    }

    static func sweep() {
        let files = FileManager.default
        for name in (try? files.contentsOfDirectory(atPath: BPFFS.defaultMount)) ?? [] where ownerIsDead(name) {
            try? BPFFS.removeTree(BPFFS.defaultMount + "/" + name)
        }
        if let root = try? Cgroup.root() {
            for name in (try? files.contentsOfDirectory(atPath: root.path)) ?? [] where ownerIsDead(name) {
                let cgroup = Cgroup(path: root.path + "/" + name)
                for pid in cgroup.processes() { try? root.add(process: pid) }
                try? cgroup.remove()
            }
        }
        for name in (try? files.contentsOfDirectory(atPath: "/var/run/netns")) ?? [] where ownerIsDead(name) {
            NetworkNamespace(name: name).delete()
        }
    }
}
