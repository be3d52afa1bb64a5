import Atomics
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Restarting a server without losing a connection: the old process hands its listening sockets to
/// the new one over a Unix socket (`SCM_RIGHTS`), the new one starts accepting on them, and only then
/// does the old one stop accepting and drain.
///
/// The new process receives descriptors for the *same* sockets, so the kernel's accept queues are
/// shared and nothing queued is lost when the old process closes its copies. Listeners the new
/// process does not adopt are closed by it; with `net.ipv4.tcp_migrate_req=1` the kernel moves their
/// queued connections to a live listener of the group (StraitSteer's migrate-aware program chooses
/// which). Extra descriptors (StraitSteer's BPF maps, say) travel in the same message.
///
/// The exchange, on a `SOCK_SEQPACKET` Unix socket at a path the old process listens on:
/// ```
/// new → old  "take"
/// old → new  "strait-handover 1 <listeners> <extras>\n<note>"  + listeners and extras (SCM_RIGHTS)
/// new → old  "ready"        (the new process accepts on every listener it keeps)
/// old → new  "stopping"     (the old process no longer accepts; it drains its connections)
/// ```
public enum ListenerHandOver {
    /// What the old process offers: its listeners, extra descriptors, and a note (free text, e.g.
    /// JSON naming the extras). Descriptors stay the offerer's; the taker gets duplicates.
    public struct Package: Sendable {
        public var listeners: [CInt]
        public var extras: [CInt]
        public var note: String
        /// Whether the extras were duplicated for this hand-over alone: the offer closes them once sent.
        public var closesExtrasAfterSending: Bool

        public init(listeners: [CInt], extras: [CInt] = [], note: String = "", closesExtrasAfterSending: Bool = false) {
            self.listeners = listeners
            self.extras = extras
            self.note = note
            self.closesExtrasAfterSending = closesExtrasAfterSending
        }
    }

    /// Connects to the offer at `path` and takes its descriptors. The caller owns everything in the
    /// receipt: adopt the listeners into a server, then call ``Receipt/confirm()`` so the old process
    /// stops accepting. Waits at most `timeout` for each answer.
    public static func take(from path: String, timeout: Duration = .seconds(5)) throws(SystemCallError) -> Receipt {
        let fd = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue))
        do throws(SystemCallError) {
            try SocketCall.setNonBlocking(fd, false)
            try setTimeout(fd, timeout)
            try SocketAddress.unix(path: path).withSockaddr { address, length throws(SystemCallError) in
                _ = try SocketCall.connect(fd, address, length)
            }
            try SocketCall.send(fd, bytes: Array("take".utf8), descriptors: [])
            let (bytes, descriptors) = try SocketCall.receive(fd, capacity: 65536)
            let text = String(decoding: bytes, as: UTF8.self)
            let header = text.prefix { $0 != "\n" }.split(separator: " ")
            guard header.count == 4, header[0] == "strait-handover", header[1] == "1",
                let listenerCount = Int(header[2]), let extraCount = Int(header[3]),
                listenerCount + extraCount == descriptors.count
            else {
                descriptors.forEach(closeDescriptor)
                throw SystemCallError("listener hand-over from \(path): unexpected answer '\(text.prefix(80))'", .badMessage)
            }
            let note = text.firstIndex(of: "\n").map { String(text[text.index(after: $0)...]) } ?? ""
            return Receipt(
                control: fd, listenerDescriptors: Array(descriptors.prefix(listenerCount)),
                extras: Array(descriptors.dropFirst(listenerCount)), note: note)
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// What the new process received. Owns the descriptors until they are adopted or closed.
    public final class Receipt: @unchecked Sendable {
        private let control: CInt
        /// Listening sockets, in the offerer's order (one per loop for a reuseport server).
        public let listenerDescriptors: [CInt]
        /// Extra descriptors, in the offerer's order.
        public let extras: [CInt]
        public let note: String
        private var confirmed = false

        init(control: CInt, listenerDescriptors: [CInt], extras: [CInt], note: String) {
            self.control = control
            self.listenerDescriptors = listenerDescriptors
            self.extras = extras
            self.note = note
        }

        deinit { closeDescriptor(control) }

        /// The listeners as ``Listener``s for a ``Server``; the receipt no longer owns them.
        public func adoptListeners() throws(SystemCallError) -> [Listener] {
            var adopted: [Listener] = []
            for fd in listenerDescriptors { adopted.append(try Listener.adopt(fd: fd)) }
            return adopted
        }

        /// Tells the old process that this one accepts on the listeners now, and waits until it
        /// has stopped accepting. Call after the new server is running.
        public func confirm() throws(SystemCallError) {
            guard !confirmed else { return }
            confirmed = true
            try SocketCall.send(control, bytes: Array("ready".utf8), descriptors: [])
            let (answer, stray) = try SocketCall.receive(control, capacity: 64)
            stray.forEach(closeDescriptor)
            guard answer == Array("stopping".utf8) else {
                throw SystemCallError("listener hand-over: old process answered '\(String(decoding: answer, as: UTF8.self))'", .badMessage)
            }
        }
    }

    /// The old process's side: listens at `path` and hands `package()` to the first taker. When the
    /// taker confirms, calls `stopAccepting` (which must stop accepting before it returns; the
    /// connections may drain afterwards) and answers. One hand-over per offer; ``close()`` cancels.
    public final class Offer: @unchecked Sendable {
        public let path: String
        private let listener: CInt
        /// The socket file's inode: a later offer at the same path (the next generation's) is not ours to remove.
        private let inode: UInt64
        private let thread: Mutex<pthread_t?>
        private let result = OutcomeBox()

        final class OutcomeBox: Sendable {
            let value = Mutex<Result<Void, SystemCallError>?>(nil)
        }

        public init(
            path: String, package: @escaping @Sendable () -> Package, stopAccepting: @escaping @Sendable () -> Void
        ) throws(SystemCallError) {
            self.path = path
            try SocketCall.unlinkIfPresent(path)
            let fd = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue))
            do {
                try SocketCall.setNonBlocking(fd, false)
                try SocketAddress.unix(path: path).withSockaddr { address, length throws(SystemCallError) in
                    try SocketCall.bind(fd, address, length)
                }
                _ = chmod(path, 0o600)
                try SocketCall.listen(fd, backlog: 4)
            } catch {
                closeDescriptor(fd)
                throw error
            }
            listener = fd
            inode = Self.inode(of: path) ?? 0
            thread = Mutex(nil)
            let result = self.result
            let started = EventLoopGroup.startThread(name: "strait-handover") {
                let outcome = Result { () throws(SystemCallError) in try Self.serve(fd, package: package, stopAccepting: stopAccepting) }
                result.value.withLock { $0 = outcome }
            }
            thread.withLock { $0 = started }
        }

        deinit { close() }

        /// nil while waiting for a taker; then whether the hand-over completed.
        public var outcome: Result<Void, SystemCallError>? { result.value.withLock { $0 } }

        /// Stops offering (wakes a waiting accept), waits for the offer's thread, removes the path.
        public func close() {
            guard let running = thread.withLock({ current in defer { current = nil }; return current }) else { return }
            _ = Glibc.shutdown(listener, CInt(SHUT_RDWR))
            pthread_join(running, nil)
            closeDescriptor(listener)
            if Self.inode(of: path) == inode { try? SocketCall.unlinkIfPresent(path) }
        }

        static func inode(of path: String) -> UInt64? {
            var info = stat()
            return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
        }

        private static func serve(_ listener: CInt, package: () -> Package, stopAccepting: () -> Void) throws(SystemCallError) {
            let control = try systemCall("accept(hand-over)") { accept(listener, nil, nil) }
            defer { closeDescriptor(control) }
            let (request, stray) = try SocketCall.receive(control, capacity: 64)
            stray.forEach(closeDescriptor)
            guard request == Array("take".utf8) else { throw SystemCallError("listener hand-over: unexpected request", .badMessage) }
            let offered = package()
            let header = "strait-handover 1 \(offered.listeners.count) \(offered.extras.count)\n\(offered.note)"
            defer { if offered.closesExtrasAfterSending { offered.extras.forEach(closeDescriptor) } }
            try SocketCall.send(control, bytes: Array(header.utf8), descriptors: offered.listeners + offered.extras)
            let (ready, more) = try SocketCall.receive(control, capacity: 64)
            more.forEach(closeDescriptor)
            guard ready == Array("ready".utf8) else {
                throw SystemCallError("listener hand-over: the new process gave up before confirming", .connectionAbort)
            }
            stopAccepting()
            try SocketCall.send(control, bytes: Array("stopping".utf8), descriptors: [])
        }
    }

    static func setTimeout(_ fd: CInt, _ timeout: Duration) throws(SystemCallError) {
        var value = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            try systemCall("setsockopt(timeout)") { setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size)) }
        }
    }
}

extension Server {
    /// Offers this server's listeners (and `extras`) at `path` for a new process to take over.
    /// When the new process confirms, this server stops accepting at once and drains (see
    /// ``drain(idleGrace:deadline:)``); `drained` is called when its last connection closed. Keep
    /// the returned offer alive until the hand-over; close it to cancel.
    public func offerHandOver(
        at path: String, extras: [CInt] = [], note: String = "", idleGrace: Duration = .milliseconds(500),
        drainDeadline: Duration, drained: @escaping @Sendable () -> Void = {}
    ) throws(SystemCallError) -> ListenerHandOver.Offer {
        let listeners = listenerDescriptors
        return try ListenerHandOver.Offer(
            path: path, package: { ListenerHandOver.Package(listeners: listeners, extras: extras, note: note) },
            stopAccepting: { [self] in
                stopAcceptingNow()
                Task {
                    await drain(idleGrace: idleGrace, deadline: drainDeadline)
                    drained()
                }
            })
    }

    /// Stops every acceptor and waits until each loop has deregistered and closed its listener
    /// descriptor (the sockets live on in whoever else holds them).
    func stopAcceptingNow() {
        guard !acceptors.isEmpty else { return }
        let pending = ManagedAtomic<Int>(acceptors.count)
        for acceptor in acceptors {
            acceptor.loop.execute {
                acceptor.stop()
                pending.wrappingDecrement(ordering: .releasing)
            }
        }
        while pending.load(ordering: .acquiring) > 0 { usleep(200) }
    }
}
