import StraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why a listener hand-over (``ListenerHandOver``) or the adoption of a listening socket
/// (``Listener/adopt(_:)``) failed.
///
/// Only ``system(_:)`` and ``nothingOffers(path:_:)`` come from a failed system call, and they
/// carry the errno the kernel gave. Every other case is the protocol or the caller's input going
/// wrong, with no errno to invent: each names what happened and, in ``description``, what to do.
public enum HandOverError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A system call of the exchange failed (a send, a receive, the offer's bind or listen).
    case system(SystemCallError)
    /// `path` exists and is not a socket: a file of some other program. Choose another path.
    case notASocket(path: String)
    /// Nothing offers at `path`: `connect` failed with `ENOENT` (no socket file) or `ECONNREFUSED`
    /// (a socket file left by a process that has exited).
    case nothingOffers(path: String, SystemCallError)
    /// The peer at `path` answered outside the protocol (`expected` says what was due; `answer`
    /// is the start of what came): another program, or a Strait of another protocol version.
    case unexpectedAnswer(path: String, expected: String, answer: String)
    /// No `awaiting` came from the peer at `path` within `timeout`.
    case timedOut(path: String, awaiting: String, timeout: Duration)
    /// A live offer already holds `path`: process `owner`, or (nil) one that accepts but does not
    /// answer. A second offer there would take the path from it.
    case pathInUse(path: String, owner: pid_t?)
    /// The offer at `path` was closed (``ListenerHandOver/Offer/close()``) before a successor took over.
    case cancelled(path: String)
    /// A taker at `path` went away before confirming (a successor with a bad configuration, say);
    /// the offer goes on serving.
    case takerGaveUp(path: String)
    /// Descriptor `descriptor` was to be adopted as a listener but is not a listening socket.
    case notListening(descriptor: CInt)

    /// The kernel's errno when a system call failed (``system(_:)``, ``nothingOffers(path:_:)``);
    /// nil for the protocol's own failures, which have none.
    public var errno: Errno? {
        switch self {
        case .system(let error), .nothingOffers(_, let error): error.errno
        default: nil
        }
    }

    /// What happened and what to do, in one line.
    public var description: String {
        switch self {
        case .system(let error):
            "listener hand-over: \(error)"
        case .notASocket(let path):
            "listener hand-over: \(path) exists and is not a socket; give another path"
        case .nothingOffers(let path, let error) where error.errno == .noSuchFileOrDirectory:
            "listener hand-over: nothing offers at \(path) (no such socket; is the old process running with this path?)"
        case .nothingOffers(let path, let error):
            "listener hand-over: nothing offers at \(path) any more (the process that made it has exited; \(error))"
        case .unexpectedAnswer(let path, let expected, let answer):
            "listener hand-over at \(path): expected \(expected), got '\(answer)' (a different Strait version? restart with the same binary first)"
        case .timedOut(let path, let awaiting, let timeout):
            "listener hand-over at \(path): no \(awaiting) within \(timeout)"
        case .pathInUse(let path, let owner?):
            "listener hand-over: process \(owner) already offers at \(path); give this process another path (or stop that one, or restart it instead)"
        case .pathInUse(let path, nil):
            "listener hand-over: a process accepts at \(path) but does not answer; give this process another path"
        case .cancelled(let path):
            "listener hand-over at \(path): offer closed"
        case .takerGaveUp(let path):
            "listener hand-over at \(path): the new process gave up before confirming; this process goes on serving"
        case .notListening(let descriptor):
            "adopt listener \(descriptor): not a listening socket (pass a socket after listen(2))"
        }
    }
}
