#if canImport(Glibc)
import Glibc
#endif

/// Where a socket listens or connects: an IP address and port, or a Unix socket path. It is Strait's
/// one address type: every socket call in ``SocketCall`` takes it, and nothing outside StraitSystem
/// builds a `sockaddr_in` by hand.
///
/// A plain value (no descriptor, no allocation beyond a Unix path's string); the C form is built on
/// the stack for the length of one call by ``withSockaddr(_:)``.
public enum SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// An IPv4 or IPv6 address and a port in host byte order (0: the kernel chooses, when binding).
    case ip(IPAddress, port: UInt16)
    /// A Unix domain socket at a filesystem path (at most 107 bytes).
    case unix(path: String)

    /// `host` is IPv4 or IPv6 text (no name lookup); nil when it is neither.
    public init?(host: String, port: UInt16) {
        guard let address = IPAddress(host) else { return nil }
        self = .ip(address, port: port)
    }

    /// IPv4 loopback on `port` (0 lets the kernel choose).
    public static func loopback(port: UInt16 = 0) -> SocketAddress {
        .ip(IPAddress("127.0.0.1")!, port: port)
    }

    /// IPv6 loopback (`::1`) on `port` (0 lets the kernel choose).
    public static func loopbackIPv6(port: UInt16 = 0) -> SocketAddress {
        .ip(IPAddress("::1")!, port: port)
    }

    /// The port of an IP address; nil for a Unix socket.
    public var port: UInt16? {
        if case .ip(_, let port) = self { port } else { nil }
    }

    /// The address family (`AF_INET`, `AF_INET6` or `AF_UNIX`): the domain of a socket for it.
    public var family: CInt {
        switch self {
        case .ip(let address, _): address.isIPv4 ? AF_INET : AF_INET6
        case .unix: AF_UNIX
        }
    }

    /// `1.2.3.4:80`, `[2001:db8::1]:80` or `unix:/path`: the form logs and errors print.
    public var description: String {
        switch self {
        case .ip(let address, let port): address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    /// Calls `body` with the C form of the address (sockaddr_in, sockaddr_in6 or sockaddr_un), built
    /// in a `sockaddr_storage` on the stack and valid only inside `body`. Throws `ENAMETOOLONG`
    /// (as bind(2) would) for a Unix path that does not fit `sun_path`.
    public func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> Result) throws(SystemCallError) -> Result {
        var storage = sockaddr_storage()
        let length: socklen_t
        switch self {
        case .ip(.v4(let raw), let port):
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { bytes in
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = port.bigEndian
                address.sin_addr.s_addr = raw
                bytes.storeBytes(of: address, as: sockaddr_in.self)
            }
        case .ip(.v6(let raw), let port):
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { bytes in
                var address = sockaddr_in6()
                address.sin6_family = sa_family_t(AF_INET6)
                address.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: raw) }
                bytes.storeBytes(of: address, as: sockaddr_in6.self)
            }
        case .unix(let path):
            var address = sockaddr_un()
            let capacity = MemoryLayout.size(ofValue: address.sun_path)
            let utf8 = Array(path.utf8)
            guard utf8.count < capacity else { throw SystemCallError("unix socket path \(path)", .fileNameTooLong) }
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: utf8) }
            length = socklen_t(MemoryLayout<sa_family_t>.size + utf8.count + 1)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_un.self) }
        }
        return try withUnsafePointer(to: &storage) { pointer throws(SystemCallError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(SystemCallError) in
                try body(address, length)
            }
        }
    }

    /// The address a socket is bound to (`getsockname`); see ``SocketCall/localAddress(of:)``.
    public static func local(of fd: CInt) throws(SystemCallError) -> SocketAddress {
        try SocketCall.localAddress(of: fd)
    }

    /// The peer of a connected socket (`getpeername`), or nil when it has none or is not IP.
    public static func peer(of fd: CInt) -> SocketAddress? {
        guard let peer = try? SocketCall.peerAddress(of: fd), case .ip = peer else { return nil }
        return peer
    }

    /// Decodes an address the kernel filled in (sockaddr_in, sockaddr_in6 or sockaddr_un): what
    /// getsockname(2), getpeername(2), accept(2) and recvfrom(2) return.
    public init(storage: sockaddr_storage) {
        var storage = storage
        let family = CInt(storage.ss_family)
        self = withUnsafeBytes(of: &storage) { bytes in
            switch family {
            case AF_INET:
                let address = bytes.load(as: sockaddr_in.self)
                return .ip(.v4(address.sin_addr.s_addr), port: UInt16(bigEndian: address.sin_port))
            case AF_INET6:
                let address = bytes.load(as: sockaddr_in6.self)
                return .ip(.v6(withUnsafeBytes(of: address.sin6_addr) { Array($0) }), port: UInt16(bigEndian: address.sin6_port))
            default:
                let address = bytes.load(as: sockaddr_un.self)
                let path = withUnsafeBytes(of: address.sun_path) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                return .unix(path: path)
            }
        }
    }
}
