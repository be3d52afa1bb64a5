import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

extension Listener {
    /// Takes ownership of a listening socket made elsewhere: received from another process over a
    /// Unix socket (``ListenerHandOver``), or inherited. Throws ``HandOverError/notListening(descriptor:)``
    /// if `descriptor` is not a listening socket (it is closed then, with the consumed value), and
    /// ``HandOverError/system(_:)`` if making it non-blocking or reading its address fails. Made
    /// non-blocking here; the listener, and whoever it is handed to (a ``Server``), closes it from here on.
    public static func adopt(_ descriptor: consuming OwnedDescriptor) throws(HandOverError) -> Listener {
        guard SocketCall.isListening(descriptor.rawValue) else {
            throw .notListening(descriptor: descriptor.rawValue)
        }
        let fd = descriptor.rawValue
        let address = try ListenerHandOver.system { () throws(SystemCallError) in
            try SocketCall.setNonBlocking(fd, true)
            return try SocketAddress.local(of: fd)
        }
        return Listener(fd: descriptor.take(), address: address)
    }
}
