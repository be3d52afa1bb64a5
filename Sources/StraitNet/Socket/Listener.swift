import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// A bound, listening socket (TCP or Unix), not yet polled by any loop.
///
/// A ``Server`` takes listeners and owns them from then on: it closes them when it stops accepting.
/// A listener never handed to a server is closed by ``close()``. For a Unix socket the path is
/// unlinked before binding (a stale file from an earlier run) and again on close.
public final class Listener: Sendable {
    /// The listening socket, owned by this listener (or by the ``Server`` it was handed to), which
    /// closes it; others may look at it (cookies, options) but never close it.
    public let fd: CInt
    /// The bound address; for TCP port 0, the port the kernel chose.
    public let address: SocketAddress

    init(fd: CInt, address: SocketAddress) {
        self.fd = fd
        self.address = address
    }

    /// Binds and listens on a TCP address. `reusePort` sets `SO_REUSEPORT` so several listeners
    /// (one per loop) can share the port and the kernel spreads connections between them.
    public static func tcp(_ address: SocketAddress, reusePort: Bool = false, backlog: Int = 1024) throws(SystemCallError) -> Listener {
        let fd = try SocketCall.socket(domain: address.family, type: CInt(SOCK_STREAM.rawValue))
        do {
            try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            if reusePort { try SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1) }
            try SocketCall.bind(fd, to: address)
            try SocketCall.listen(fd, backlog: CInt(backlog))
            return Listener(fd: fd, address: try SocketAddress.local(of: fd))
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// Binds and listens on a Unix stream socket at `path`.
    public static func unix(path: String, backlog: Int = 1024) throws(SystemCallError) -> Listener {
        let address = SocketAddress.unix(path: path)
        try SocketCall.unlinkIfPresent(path)
        let fd = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_STREAM.rawValue))
        do {
            try SocketCall.bind(fd, to: address)
            try SocketCall.listen(fd, backlog: CInt(backlog))
            return Listener(fd: fd, address: address)
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// Closes the socket (and removes a Unix socket's path). Only for a listener no server owns.
    public func close() {
        closeDescriptor(fd)
        unlinkPath()
    }

    func unlinkPath() {
        if case .unix(let path) = address { try? SocketCall.unlinkIfPresent(path) }
    }
}
