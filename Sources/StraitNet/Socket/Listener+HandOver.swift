import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

extension Listener {
    /// Takes ownership of a listening socket made elsewhere: received from another process over a
    /// Unix socket (``ListenerHandOver``), or inherited. Throws `EINVAL` if `descriptor` is not a
    /// listening socket (it is closed then, with the consumed value). Made non-blocking here; the
    /// listener, and whoever it is handed to (a ``Server``), closes it from here on.
    public static func adopt(_ descriptor: consuming OwnedDescriptor) throws(SystemCallError) -> Listener {
        guard SocketCall.isListening(descriptor.rawValue) else {
            throw SystemCallError("adopt listener \(descriptor.rawValue): not a listening socket", .invalidArgument)
        }
        try SocketCall.setNonBlocking(descriptor.rawValue, true)
        let address = try SocketAddress.local(of: descriptor.rawValue)
        return Listener(fd: descriptor.take(), address: address)
    }
}
