import Foundation
import StraitBPF
import StraitSystem

/// A cgroup v2 made for one test, with its own bpffs pin folder. Only this test's sockets are ever
/// created inside it (the process joins it just for that, under a process-wide lock) and both are
/// removed at the end even when the test fails.
public final class TestCgroup: @unchecked Sendable {
    /// The test's own cgroup v2, a child of the cgroup v2 root with a name unique to the test;
    /// removed at teardown.
    public let cgroup: Cgroup
    /// The test's own bpffs folder for pins (`/sys/fs/bpf/<test name>`); removed with everything in
    /// it at teardown.
    public let pinDirectory: String
    private let home: Cgroup

    /// Moves between cgroups are process-wide, so tests take turns.
    private static let membership = NSRecursiveLock()

    private init(name: String) throws {
        _ = LeftoverSweep.once
        try BPFFS.ensureMounted()
        home = try Cgroup.of()
        cgroup = try Cgroup.root().makeChild(named: name)
        pinDirectory = BPFFS.defaultMount + "/" + name
        try BPFFS.makeDirectory(pinDirectory)
    }

    /// Runs `body` with a fresh cgroup and pin folder, then tears both down.
    public static func with<T>(_ body: (TestCgroup) throws -> T) throws -> T {
        let fixture = try TestCgroup(name: uniqueTestName())
        defer { fixture.tearDown() }
        return try body(fixture)
    }

    /// The same for an async `body` (a proxy test that awaits its shutdown).
    public static func with<T>(_ body: (TestCgroup) async throws -> T) async throws -> T {
        let fixture = try TestCgroup(name: uniqueTestName())
        defer { fixture.tearDown() }
        return try await body(fixture)
    }

    /// Runs `body` with this process inside the cgroup: sockets it creates belong to the cgroup
    /// for life. The process goes back to its own cgroup afterwards.
    public func inside<T>(_ body: () throws -> T) throws -> T {
        try Self.membership.withLock {
            try cgroup.add()
            defer { try? home.add() }
            return try body()
        }
    }

    /// Runs `body` with the process in its own cgroup, guaranteed outside every test cgroup.
    public static func outside<T>(_ body: () throws -> T) rethrows -> T {
        try membership.withLock { try body() }
    }

    private func tearDown() {
        Self.membership.withLock {
            for pid in cgroup.processes() { try? home.add(process: pid) }
        }
        try? BPFFS.removeTree(pinDirectory)
        // Removing the cgroup also releases any link still attached to it.
        for _ in 0..<50 {
            if (try? cgroup.remove()) != nil || !cgroup.exists { break }
            usleep(20_000)
        }
    }
}

/// A fresh name for a test's or benchmark's kernel objects: `STEM-PID-N` (``LeftoverSweep`` removes
/// those whose process has died).
public func uniqueTestName(_ stem: String = "strait-test") -> String {
    struct Counter { nonisolated(unsafe) static var value = 0; static let lock = NSLock() }
    let n = Counter.lock.withLock { Counter.value += 1; return Counter.value }
    return "\(stem)-\(getpid())-\(n)"
}
