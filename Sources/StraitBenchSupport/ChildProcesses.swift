import Foundation

/// The peers (servers, load clients, wrk) running right now, kept where a signal handler can read
/// them: if the benchmark is interrupted or terminated (Ctrl-C, `timeout`), it kills them before
/// exiting, so no server outlives the run holding a port and a core.
public enum ChildProcesses {
    static let capacity = 32
    /// Process ids, 0 for a free slot. Written under `lock`; read without it by the signal handler.
    nonisolated(unsafe) static let slots: UnsafeMutablePointer<pid_t> = {
        let slots = UnsafeMutablePointer<pid_t>.allocate(capacity: capacity)
        slots.initialize(repeating: 0, count: capacity)
        return slots
    }()
    static let lock = NSLock()

    /// Kills the registered children on SIGINT and SIGTERM, then exits with 128 + the signal.
    public static func killOnInterrupt() {
        _ = slots  // initialized here, never in the handler
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber) { received in
                // Raw kill(2) and _exit(2): only async-signal-safe calls in a handler (ProcessCall
                // formats an error message, which allocates).
                for index in 0..<ChildProcesses.capacity where ChildProcesses.slots[index] > 0 {
                    kill(ChildProcesses.slots[index], SIGKILL)
                }
                _exit(128 + received)
            }
        }
    }

    /// Registers a child that the interrupt handler must kill; ``remove(_:)`` once it is reaped.
    public static func add(_ pid: pid_t) {
        lock.withLock {
            if let free = (0..<capacity).first(where: { slots[$0] == 0 }) { slots[free] = pid }
        }
    }

    /// Forgets a child that has exited.
    public static func remove(_ pid: pid_t) {
        lock.withLock {
            for index in 0..<capacity where slots[index] == pid { slots[index] = 0 }
        }
    }
}
