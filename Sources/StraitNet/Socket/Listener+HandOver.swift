import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

extension Listener {
    /// Takes ownership of a listening socket made elsewhere: received from another process over a
    /// Unix socket (``ListenerHandOver``), or inherited. Throws `ENOTSOCK`/`EINVAL` if `fd` is not a
    /// listening socket; the descriptor is then still the caller's. Made non-blocking here.
    public static func adopt(fd: CInt) throws(SystemCallError) -> Listener {
        guard SocketCall.isListening(fd) else { throw SystemCallError("adopt listener \(fd): not a listening socket", .invalidArgument) }
        try SocketCall.setNonBlocking(fd, true)
        return Listener(fd: fd, address: try SocketAddress.local(of: fd))
    }
}
