import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// An owned file descriptor for a BPF map, program or link: closed exactly once, when the owner
/// is closed or deinitialised.
final class Descriptor: @unchecked Sendable {
    private(set) var rawValue: CInt

    init(taking fd: CInt) { rawValue = fd }

    deinit { close() }

    func close() {
        if rawValue >= 0 { closeDescriptor(rawValue) }
        rawValue = -1
    }

    /// Gives the descriptor up without closing it (its new owner closes it).
    func forget() { rawValue = -1 }

    static func duplicate(_ fd: CInt, _ what: String) throws(BPFError) -> Descriptor {
        do {
            return Descriptor(taking: try systemCall(what) { fcntl(fd, F_DUPFD_CLOEXEC, 3) })
        } catch {
            throw BPFError(error)
        }
    }
}
