#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor with exactly one owner, checked by the compiler: the value cannot be copied,
/// only borrowed (to read ``rawValue`` for a system call) or consumed (to move it to a new owner).
/// Whoever holds it last closes it: ``deinit`` closes, so a descriptor dropped on an error path,
/// or never claimed, is closed all the same, and never twice.
///
/// For descriptors whose ownership moves: listening sockets handed to a successor over
/// `SCM_RIGHTS`, sockets a process inherits, the offer socket of a hand-over. Use ``take()`` to give
/// the bare number to an owner that closes it itself (a ``Listener``, a `BPFMap`), ``close()`` to
/// close it early. Costs nothing beyond the `CInt`.
public struct OwnedDescriptor: ~Copyable, Sendable {
    /// The descriptor number, for system calls while this value owns it. Never close it yourself.
    public let rawValue: CInt

    /// Takes ownership of `rawValue`: from here on this value closes it.
    public init(taking rawValue: CInt) {
        self.rawValue = rawValue
    }

    deinit { closeDescriptor(rawValue) }

    /// Gives the descriptor up without closing it: the caller owns the number it returns.
    public consuming func take() -> CInt {
        let fd = rawValue
        discard self
        return fd
    }

    /// Closes the descriptor now (what dropping the value does, said explicitly).
    public consuming func close() {
        closeDescriptor(take())
    }

    /// A second descriptor for the same open file (`fcntl(F_DUPFD_CLOEXEC)`), owned by the result:
    /// for a copy that one owner sends away while another keeps serving on the original.
    public borrowing func duplicate() throws(SystemCallError) -> OwnedDescriptor {
        try Self.duplicating(rawValue)
    }

    /// A new descriptor for the open file `fd` names (`fcntl(F_DUPFD_CLOEXEC)`), owned by the
    /// result; `fd` stays whoever's it was.
    public static func duplicating(_ fd: CInt) throws(SystemCallError) -> OwnedDescriptor {
        OwnedDescriptor(taking: try systemCall("fcntl(F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) })
    }
}

/// Descriptors in a fixed order, owned together (what one `SCM_RIGHTS` message carries): each is
/// closed when the list goes away, unless it was taken out first. Take them out in order with
/// ``takeFirst()``, or all at once with ``takeAll()``; ``rawValues`` lends the numbers that are
/// still owned, in order, for sending or inspecting.
public struct OwnedDescriptors: ~Copyable, Sendable {
    private var owned: [CInt]

    /// Takes ownership of every descriptor in `rawValues`.
    public init(taking rawValues: [CInt] = []) {
        owned = rawValues
    }

    deinit { owned.forEach(closeDescriptor) }

    /// The numbers still owned, in order. They stay this list's: never close them yourself.
    public var rawValues: [CInt] { owned }

    /// How many are still owned.
    public var count: Int { owned.count }

    /// Whether none is owned any more.
    public var isEmpty: Bool { owned.isEmpty }

    /// Adds `descriptor` at the end; the list owns it from here on.
    public mutating func append(_ descriptor: consuming OwnedDescriptor) {
        owned.append(descriptor.take())
    }

    /// The first descriptor still owned, now the caller's; nil when none is left.
    public mutating func takeFirst() -> OwnedDescriptor? {
        owned.isEmpty ? nil : OwnedDescriptor(taking: owned.removeFirst())
    }

    /// The first `count` descriptors as a list of their own (fewer if fewer are left).
    public mutating func takeFirst(_ count: Int) -> OwnedDescriptors {
        let taken = Array(owned.prefix(count))
        owned.removeFirst(taken.count)
        return OwnedDescriptors(taking: taken)
    }

    /// Every descriptor still owned, as bare numbers the caller now owns; the list is left empty.
    public consuming func takeAll() -> [CInt] {
        let all = owned
        owned = []
        return all
    }
}

/// Both ends of a pipe (``RelayCall/pipe(size:)``), each owned by its ``OwnedDescriptor``: an end
/// that is dropped, or the pair, closes. Move an end to its own owner by consuming the field
/// (`let wake = pipe.readEnd`), or take both numbers with ``take()`` for an owner that closes them
/// itself. Costs nothing beyond the two `CInt`s.
@frozen public struct OwnedPipe: ~Copyable, Sendable {
    /// The end to read from.
    public let readEnd: OwnedDescriptor
    /// The end to write to.
    public let writeEnd: OwnedDescriptor

    /// Owns `readEnd` and `writeEnd` together.
    public init(readEnd: consuming OwnedDescriptor, writeEnd: consuming OwnedDescriptor) {
        self.readEnd = readEnd
        self.writeEnd = writeEnd
    }

    /// Gives both ends up without closing them: the caller owns the numbers it returns.
    public consuming func take() -> (read: CInt, write: CInt) {
        (readEnd.take(), writeEnd.take())
    }
}
