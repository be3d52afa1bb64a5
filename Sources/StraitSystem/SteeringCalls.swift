import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The calls behind socket steering and restarts without loss: `SO_REUSEPORT` group programs,
/// socket cookies, descriptors passed over Unix sockets (`SCM_RIGHTS`), and per-network-namespace
/// sysctls. Each is wrapped once, like the rest of ``SocketCall``.
extension SocketCall {
    /// The socket's cookie (`SO_COOKIE`): a 64-bit id unique for the socket's life in this boot.
    /// It names a socket across descriptors and processes, which an fd number cannot.
    public static func cookie(_ fd: CInt) throws(SystemCallError) -> UInt64 {
        var cookie: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        try systemCall("getsockopt(SO_COOKIE)") { getsockopt(fd, SOL_SOCKET, CInt(STRAIT_SO_COOKIE), &cookie, &length) }
        return cookie
    }

    /// `SO_ATTACH_REUSEPORT_EBPF`: makes the BPF program at `programFD` choose the socket for every
    /// new connection or datagram of the `SO_REUSEPORT` group `fd` belongs to (replacing any program).
    public static func attachReuseportProgram(_ fd: CInt, programFD: CInt) throws(SystemCallError) {
        try setOption(fd, level: SOL_SOCKET, name: CInt(STRAIT_SO_ATTACH_REUSEPORT_EBPF), value: programFD)
    }

    /// `SO_DETACH_REUSEPORT_BPF`: the group goes back to the kernel's hash. `ENOENT` when none is attached.
    public static func detachReuseportProgram(_ fd: CInt) throws(SystemCallError) {
        try setOption(fd, level: SOL_SOCKET, name: CInt(STRAIT_SO_DETACH_REUSEPORT_BPF), value: 0)
    }

    /// Sends `bytes` with `descriptors` attached (`SCM_RIGHTS`) on a connected Unix socket. The
    /// receiver gets its own descriptors for the same open files; the sender keeps and still owns its own.
    public static func send(_ socket: CInt, bytes: [UInt8], descriptors: [CInt]) throws(SystemCallError) {
        let sent = try systemCall("sendmsg(SCM_RIGHTS)") {
            bytes.withUnsafeBytes { buffer in
                strait_send_with_descriptors(socket, buffer.baseAddress, buffer.count, descriptors, UInt32(descriptors.count))
            }
        }
        guard sent == bytes.count else { throw SystemCallError("sendmsg(SCM_RIGHTS): short write", .messageTooLong) }
    }

    /// Receives one message of at most `capacity` bytes and up to 64 descriptors (close-on-exec).
    /// The caller owns the descriptors. Throws `EMSGSIZE` if descriptors were dropped for lack of room.
    /// Blocks unless `socket` is non-blocking.
    public static func receive(_ socket: CInt, capacity: Int) throws(SystemCallError) -> (bytes: [UInt8], descriptors: [CInt]) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var fds = [CInt](repeating: -1, count: 64)
        var count: UInt32 = 0
        var truncated: CInt = 0
        let received = try systemCall("recvmsg(SCM_RIGHTS)") {
            bytes.withUnsafeMutableBytes { buffer in
                strait_receive_with_descriptors(socket, buffer.baseAddress, buffer.count, &fds, 64, &count, &truncated)
            }
        }
        let descriptors = Array(fds.prefix(Int(count)))
        if truncated != 0 {
            descriptors.forEach(closeDescriptor)
            throw SystemCallError("recvmsg(SCM_RIGHTS): descriptors truncated", .messageTooLong)
        }
        return (Array(bytes.prefix(received)), descriptors)
    }

    /// A `socketpair(AF_UNIX, SOCK_STREAM)`, blocking and close-on-exec.
    public static func unixPair() throws(SystemCallError) -> (CInt, CInt) {
        var fds: [CInt] = [-1, -1]
        try systemCall("socketpair") { socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Makes a descriptor blocking (`clear`) or non-blocking (`set`) with `fcntl(F_SETFL)`.
    public static func setNonBlocking(_ fd: CInt, _ nonBlocking: Bool) throws(SystemCallError) {
        let flags = try systemCall("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        try systemCall("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
    }

    /// `SO_ACCEPTCONN`: whether `fd` is a listening socket, to check a handed-over descriptor
    /// before adopting it.
    public static func isListening(_ fd: CInt) -> Bool {
        (try? option(fd, level: SOL_SOCKET, name: SO_ACCEPTCONN)) == 1
    }
}

/// Per-network-namespace sysctls (`/proc/sys/net/...`) read and written from inside a namespace.
///
/// `/proc/sys/net` shows the namespace of the calling thread, so call these inside
/// ``NetworkNamespace/run(_:)``. Never write host sysctls from tests or benchmarks.
public enum NamespaceSysctl {
    /// `net.ipv4.tcp_migrate_req`: when 1, requests and connections queued on a listener that
    /// closes are moved to another listener of its `SO_REUSEPORT` group instead of being reset.
    public static let tcpMigrateRequests = "net/ipv4/tcp_migrate_req"

    /// The sysctl's value, trailing newline trimmed (open, one read of at most 256 bytes, close).
    public static func read(_ name: String) throws(SystemCallError) -> String {
        let fd = try systemCall("open /proc/sys/\(name)") { open("/proc/sys/" + name, O_RDONLY | O_CLOEXEC) }
        defer { closeDescriptor(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = try systemCall("read /proc/sys/\(name)") { Glibc.read(fd, &buffer, buffer.count) }
        return String(decoding: buffer.prefix(count), as: UTF8.self).trimmingSpaces
    }

    /// Writes `value` (and a newline) to the sysctl; needs CAP_NET_ADMIN in the namespace's user namespace.
    public static func write(_ name: String, _ value: String) throws(SystemCallError) {
        let fd = try systemCall("open /proc/sys/\(name)") { open("/proc/sys/" + name, O_WRONLY | O_CLOEXEC) }
        defer { closeDescriptor(fd) }
        let bytes = Array((value + "\n").utf8)
        try systemCall("write /proc/sys/\(name)") { Glibc.write(fd, bytes, bytes.count) }
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var text = Substring(self)
        while let last = text.last, last == "\n" || last == " " { text = text.dropLast() }
        return String(text)
    }
}

extension NamespaceSysctl {
    /// `net.ipv4.ip_local_port_range`: the ports the kernel picks for outgoing connections (and for
    /// port 0) in the calling thread's namespace. A listener bound inside it can find its port held
    /// by a client socket.
    public static func ephemeralPorts() throws -> ClosedRange<UInt16> {
        let text = try read("net/ipv4/ip_local_port_range")
        let bounds = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt16($0) }
        guard bounds.count == 2, bounds[0] <= bounds[1] else { throw SysctlValueError(name: "net/ipv4/ip_local_port_range", text: text) }
        return bounds[0]...bounds[1]
    }
}

/// A sysctl whose text is not what the kernel writes there (not two ports for a port range).
public struct SysctlValueError: Error, Equatable, CustomStringConvertible {
    /// The sysctl, as a path below `/proc/sys`.
    public let name: String
    /// What it read.
    public let text: String

    /// Which sysctl read back what, for an operator to check by hand.
    public var description: String { "/proc/sys/\(name) reads '\(text)', which is not the kernel's format" }
}
