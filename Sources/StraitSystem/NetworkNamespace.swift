import CStraitSystem
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A named network namespace (as `ip netns` makes them, under /var/run/netns), for tests and
/// benchmarks that need hosts of their own. Its loopback is brought up on creation.
public struct NetworkNamespace: Sendable, Hashable {
    /// The `ip netns` name.
    public let name: String

    /// Names an existing namespace; nothing is opened (``create(_:)`` makes one).
    public init(name: String) { self.name = name }

    /// Where `ip netns` keeps the namespace open (a bind mount of its nsfs file).
    public var path: String { "/var/run/netns/\(name)" }

    /// The inode of the calling thread's network namespace (`/proc/thread-self/ns/net`): what tells
    /// two namespaces apart while both live (two namespaces may each have an `eth0`).
    public static func currentInode() throws(SystemCallError) -> UInt64 {
        try inode(of: "/proc/thread-self/ns/net")
    }

    /// The inode of this named namespace.
    public func inode() throws(SystemCallError) -> UInt64 { try Self.inode(of: path) }

    /// The `ip netns` name of the namespace with this inode, or nil when none names it.
    public static func named(inode: UInt64) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/var/run/netns")) ?? []
        return names.sorted().first { (try? NetworkNamespace(name: $0).inode()) == inode }
    }

    private static func inode(of path: String) throws(SystemCallError) -> UInt64 {
        var status = stat()
        try systemCall("stat(\(path))") { stat(path, &status) }
        return UInt64(status.st_ino)
    }

    /// Creates the namespace with `ip netns add` and brings its loopback up.
    public static func create(_ name: String) throws -> NetworkNamespace {
        try runIP(["netns", "add", name])
        let namespace = NetworkNamespace(name: name)
        do {
            try runIP(["-n", name, "link", "set", "lo", "up"])
        } catch {
            namespace.delete()
            throw error
        }
        return namespace
    }

    /// Deletes the namespace (its interfaces go with it). Missing is fine.
    public func delete() {
        _ = try? Self.runIP(["netns", "delete", name])
    }

    /// Runs `body` on a new thread that has entered this namespace, and waits for it. Sockets made
    /// in `body` belong to the namespace for life; the rest of the process is unaffected.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<T, Error>!
        let path = self.path
        Thread.detachNewThread {
            defer { done.signal() }
            result = Result {
                let fd = try systemCall("open \(path)") { open(path, O_RDONLY | O_CLOEXEC) }
                defer { closeDescriptor(fd) }
                try systemCall("setns \(path)") { strait_setns_network(fd) }
                return try body()
            }
        }
        done.wait()
        return try result.get()
    }

    /// Runs `ip` with `arguments`; throws with its output when it fails.
    @discardableResult
    public static func runIP(_ arguments: [String]) throws -> String {
        try runTool(FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip", arguments)
    }

    /// Runs an iproute2 tool (`ip`, `tc`) at `path`, in the calling thread's network namespace (the
    /// child inherits the thread's), and waits for it; throws ``ToolFailure`` with its output when it
    /// fails. Costs a fork and exec (a few milliseconds).
    @discardableResult
    public static func runTool(_ path: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw ToolFailure(
                command: [URL(fileURLWithPath: path).lastPathComponent] + arguments, status: process.terminationStatus,
                output: text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return text
    }

    /// Packets and bytes received on an interface in this namespace.
    public func receiveCounters(interface: String = "lo") throws -> (packets: UInt64, bytes: UInt64) {
        try run {
            // /sys/class/net shows the namespace /sys was mounted in; /proc/thread-self/net is this thread's.
            let text = try String(contentsOfFile: "/proc/thread-self/net/dev", encoding: .utf8)
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == interface else { continue }
                let fields = parts[1].split(separator: " ")
                return (UInt64(fields[1]) ?? 0, UInt64(fields[0]) ?? 0)
            }
            throw NetworkNamespaceError.noInterface(interface, namespace: name)
        }
    }
}

/// Why a question about a ``NetworkNamespace`` has no answer, apart from a failed syscall.
public enum NetworkNamespaceError: Error, Equatable, CustomStringConvertible {
    /// The namespace has no interface by that name (`/proc/thread-self/net/dev` inside it lists none).
    case noInterface(String, namespace: String)

    /// What is missing and the command that lists what there is.
    public var description: String {
        switch self {
        case .noInterface(let interface, let namespace): "no interface \(interface) in network namespace \(namespace) (`ip -n \(namespace) link` lists them)"
        }
    }
}
