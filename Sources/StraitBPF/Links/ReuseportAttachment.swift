import CLibBPF
import StraitSystem

/// An `sk_reuseport` program attached to a `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_EBPF`): it
/// picks the socket for each new connection or datagram, usually from a ``ReuseportSocketArray``.
///
/// The kernel keeps the program on the *group*, not on a socket or a descriptor, so this is not a
/// BPF link: the program stays attached while any socket of the group lives, and goes with the
/// group's last socket. ``close()`` detaches through the socket it was attached on if that socket
/// is still open (checked by its cookie, so a reused descriptor number is never touched);
/// ``detach(through:)`` detaches through any other member. The attachment holds no socket
/// reference, so closing a member still closes it (and, with `tcp_migrate_req`, migrates its queue).
public final class ReuseportAttachment: @unchecked Sendable {
    /// The program, kept so its id and name can be reported; the group holds its own reference.
    public let program: BPFProgram
    private let socket: CInt
    private let socketCookie: UInt64
    private var attached = true

    init(program: BPFProgram, socket: CInt, socketCookie: UInt64) {
        self.program = program
        self.socket = socket
        self.socketCookie = socketCookie
    }

    /// Whether the program can choose sockets being migrated off a closing listener
    /// (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`), rather than only new connections.
    public var migrates: Bool { program.expectedAttachType == BPF_SK_REUSEPORT_SELECT_OR_MIGRATE }

    /// Detaches the program from the group through `fd`, any socket still in the group. The group
    /// goes back to the kernel's hash. A group without a program (ENOENT) is not an error.
    public func detach(through fd: CInt) throws(BPFError) {
        defer { attached = false }
        do {
            try SocketCall.detachReuseportProgram(fd)
        } catch where error.errno == .noSuchFileOrDirectory {
            return
        } catch {
            throw BPFError(error)
        }
    }

    /// Detaches through the socket it was attached on, if that socket is still open; otherwise
    /// does nothing (the program goes when the group's last socket closes, or use ``detach(through:)``).
    public func close() throws(BPFError) {
        guard attached else { return }
        attached = false
        guard let cookie = try? SocketCall.cookie(socket), cookie == socketCookie else { return }
        try detach(through: socket)
    }
}

extension ReuseportAttachment {
    /// An attachment made elsewhere (by the process that handed this one its sockets and program):
    /// `program` is already attached to the group of `socketFD`. Lets this process detach it later.
    public static func existing(program: BPFProgram, attachedThrough socketFD: CInt) throws(BPFError) -> ReuseportAttachment {
        do {
            return ReuseportAttachment(program: program, socket: socketFD, socketCookie: try SocketCall.cookie(socketFD))
        } catch {
            throw BPFError(error)
        }
    }
}

extension BPFProgram {
    /// Attaches this `sk_reuseport` program to the `SO_REUSEPORT` group of `socketFD` (a bound,
    /// listening TCP socket or a bound UDP socket), replacing any program the group had. Costs one
    /// setsockopt. For migration of queued connections the program must have been loaded with the
    /// expected attach type `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (section `sk_reuseport/migrate`, or
    /// ``BPFObjectSpec/setExpectedAttachType(_:forProgram:)``).
    public func attach(reuseportGroupOf socketFD: CInt) throws(BPFError) -> ReuseportAttachment {
        guard type == BPF_PROG_TYPE_SK_REUSEPORT else {
            throw .unsupported("program '\(name)' is not an sk_reuseport program and cannot steer a SO_REUSEPORT group")
        }
        do {
            let cookie = try SocketCall.cookie(socketFD)
            try SocketCall.attachReuseportProgram(socketFD, programFD: descriptor.rawValue)
            return ReuseportAttachment(program: self, socket: socketFD, socketCookie: cookie)
        } catch {
            throw BPFError(error)
        }
    }
}
