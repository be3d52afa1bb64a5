import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

/// `strait lb status` from another process: the running lb's state file (services, backends,
/// health, backend ids), with the connect counts read fresh from the per-CPU maps it pinned.
public enum LBStatus {
    /// What the running process publishes.
    public struct State: Codable, Sendable {
        /// The lb process, so `status` can tell a stale file from a live one.
        public var pid: pid_t
        /// Its services and backends; counters in it are replaced by fresh reads of the pinned
        /// maps.
        public var snapshot: LBSnapshot
    }

    static func statePath(in directory: String) -> String { directory + "/state.json" }

    static func readState(path: String) throws -> State {
        guard let data = FileManager.default.contents(atPath: path) else { throw LBError.notRunning(path) }
        return try JSONDecoder().decode(State.self, from: data)
    }

    /// The current status. Throws ``LBError/notRunning(_:)`` when no live process published one.
    public static func read(stateDirectory: String = LBDaemon.defaultStateDirectory, pinDirectory: String = LBDaemon.defaultPinDirectory) throws -> LBSnapshot {
        let path = statePath(in: stateDirectory)
        let state = try readState(path: path)
        guard ProcessCall.isAlive(state.pid) else { throw LBError.notRunning(path) }
        var snapshot = state.snapshot
        let stats = try BPFMap.open(pinned: pinDirectory + "/lb_backend_stats").typed(key: UInt32.self, value: strait_lb_backend_stats.self)
        let counters = try BPFMap.open(pinned: pinDirectory + "/lb_counters").typed(key: UInt32.self, value: UInt64.self)
        for service in snapshot.services.indices {
            for backend in snapshot.services[service].backends.indices {
                let totals = try stats.summedOverCPUs(snapshot.services[service].backends[backend].id)
                snapshot.services[service].backends[backend].connects = totals.connects
                snapshot.services[service].backends[backend].datagrams = totals.datagrams
            }
        }
        snapshot.counters = LBSnapshot.Counters(
            balanced: try counters.summedOverCPUs(UInt32(STRAIT_LB_BALANCED.rawValue)),
            refused: try counters.summedOverCPUs(UInt32(STRAIT_LB_REFUSED.rawValue)),
            reversed: try counters.summedOverCPUs(UInt32(STRAIT_LB_REVERSED.rawValue)))
        return snapshot
    }

    /// The table `strait lb status` prints.
    public static func render(_ snapshot: LBSnapshot) -> String {
        var lines = ["cgroup \(snapshot.cgroup)"]
        for service in snapshot.services {
            lines.append("service \(service.name) \(service.endpoint) policy \(service.policy.rawValue)\(service.healthChecked ? " health-checked" : "")")
            for backend in service.backends {
                let health = backend.up ? "up" : "down"
                lines.append("  \(backend.endpoint.padding(toLength: 28, withPad: " ", startingAt: 0)) weight \(backend.weight)  \(health.padding(toLength: 4, withPad: " ", startingAt: 0))  connects \(backend.connects)  datagrams \(backend.datagrams)")
            }
        }
        lines.append("balanced \(snapshot.counters.balanced)  refused \(snapshot.counters.refused)  reversed \(snapshot.counters.reversed)")
        return lines.joined(separator: "\n")
    }
}
