// CPU placement of a bench server's loop threads, for `strait bench net --pin-loops` (the default).
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Where a bench server's event-loop threads run when `--pin-loops` is among its arguments: loop
/// `i` on online CPU `i` modulo the core count, through StraitSystem's one `sched_setaffinity`
/// wrapper. That is the rule of StraitNet's `EventLoopGroup.Placement.onePerCPU`, which
/// `straitnet-http` uses; `swiftnio-http` pins its NIO threads with ``pinCurrentThread(loop:)``,
/// so both servers of a run are placed alike and a difference in p99 is the server's, not the
/// scheduler's. Costs one syscall per loop, once, at start.
public enum LoopPinning {
    /// The argument that asks for pinning.
    public static let argument = "--pin-loops"

    /// Whether `arguments` ask for pinned loops.
    public static func requested(_ arguments: [String]) -> Bool { arguments.contains(argument) }

    /// The CPU loop `index` runs on: `index` modulo the online core count (`sysconf(_SC_NPROCESSORS_ONLN)`).
    public static func cpu(forLoop index: Int) -> Int { index % max(1, sysconf(CInt(_SC_NPROCESSORS_ONLN))) }

    /// Pins the calling thread, loop `index`'s, to ``cpu(forLoop:)``. A CPU this process may not use
    /// (outside its cpuset) leaves the thread where it is, as StraitNet's placement does; nothing fails.
    public static func pinCurrentThread(loop index: Int) {
        try? SocketCall.pinCurrentThread(toCPU: cpu(forLoop: index))
    }
}
