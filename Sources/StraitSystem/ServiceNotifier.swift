import CStraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// The sd_notify protocol: state changes sent as datagrams to the socket systemd names in
/// `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`), so a `Type=notify`
/// unit is "started" only once the service is ready, and `systemctl reload` waits for the reload.
///
/// Without `NOTIFY_SOCKET` (not run by systemd) every call does nothing. Each ``send(_:)`` is one
/// `socket` + `sendto` + `close`: cheap, and only at state changes. Messages are best effort, as in
/// libsystemd: a failure is returned, never fatal. The variable stays in the environment, so a
/// successor process started by `strait proxy restart` can notify too (the unit then needs
/// `NotifyAccess=all`).
public struct ServiceNotifier: Sendable {
    /// The socket address from `NOTIFY_SOCKET`, or nil when not supervised.
    public let socketPath: String?

    /// Reads `NOTIFY_SOCKET` from `environment` (the process's, by default).
    public init(environment: [String: String]? = nil) {
        if let environment {
            socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        } else {
            socketPath = getenv("NOTIFY_SOCKET").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        }
    }

    /// Notifies to an explicit socket (tests).
    public init(socketPath: String?) { self.socketPath = socketPath }

    /// Whether a supervisor listens.
    public var isEnabled: Bool { socketPath != nil }

    /// One state change of the protocol.
    public enum State: Sendable, Equatable {
        /// `READY=1`: start-up (or a reload) finished.
        case ready
        /// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC now): a reload began; send ``ready`` after it.
        case reloading
        /// `STOPPING=1`: shutdown began.
        case stopping
        /// `STATUS=…`: one line shown by `systemctl status`.
        case status(String)
        /// `MAINPID=…`: systemd should follow this process from now on (a restart's successor).
        case mainProcess(pid_t)

        var assignment: String {
            switch self {
            case .ready: "READY=1"
            case .reloading: "RELOADING=1\nMONOTONIC_USEC=\(SocketCall.monotonicNanoseconds() / 1000)"
            case .stopping: "STOPPING=1"
            case .status(let text): "STATUS=" + text.split(whereSeparator: \.isNewline).joined(separator: " ")
            case .mainProcess(let pid): "MAINPID=\(pid)"
            }
        }
    }

    /// Sends the states as one datagram (systemd applies them together); does nothing when not
    /// supervised (``isEnabled`` is false). Throws when the datagram could not be sent.
    public func send(_ states: State...) throws(SystemCallError) {
        guard let socketPath else { return }
        let message = states.map(\.assignment).joined(separator: "\n") + "\n"
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }  // abstract namespace
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { throw SystemCallError("sd_notify: NOTIFY_SOCKET too long", .fileNameTooLong) }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        // An abstract name is exactly its bytes; a path also counts its terminating NUL.
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + pathBytes.count + (pathBytes.first == 0 ? 0 : 1))
        let fd = try SocketCall.socket(domain: AF_UNIX, type: Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
        defer { closeDescriptor(fd) }
        try withUnsafePointer(to: &address) { pointer throws(SystemCallError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress throws(SystemCallError) in
                _ = try systemCall("sd_notify sendto \(socketPath)") {
                    message.withCString { sendto(fd, $0, strlen($0), Int32(MSG_NOSIGNAL), socketAddress, length) }
                }
            }
        }
    }
}
