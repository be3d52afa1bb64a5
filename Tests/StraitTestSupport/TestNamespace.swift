import Foundation
import StraitBenchSupport
import StraitSystem

/// A private network namespace for one test: created on entry, deleted on exit even when the body
/// throws. Its loopback is up; `net.ipv4.tcp_migrate_req` can be set in it without touching the host.
public enum TestNamespace {
    public static func with<T>(migrateRequests: Bool = false, _ body: (NetworkNamespace) throws -> T) throws -> T {
        _ = LeftoverSweep.once
        let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        defer { namespace.delete() }
        if migrateRequests {
            try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        }
        return try body(namespace)
    }

    /// The same, for async tests: await inside instead of blocking a concurrency thread.
    public static func with<T>(migrateRequests: Bool = false, _ body: (NetworkNamespace) async throws -> T) async throws -> T {
        _ = LeftoverSweep.once
        let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        defer { namespace.delete() }
        if migrateRequests {
            try namespace.run { try NamespaceSysctl.write(NamespaceSysctl.tcpMigrateRequests, "1") }
        }
        return try await body(namespace)
    }
}
