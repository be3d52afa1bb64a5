import Atomics
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Restarting a server without losing a connection: the old process hands every socket it listens
/// on to the new one over a Unix socket (`SCM_RIGHTS`), the new one starts accepting on them, and
/// only then does the old one stop accepting and drain.
///
/// The new process receives descriptors for the *same* sockets, so the kernel's accept queues are
/// shared and nothing queued is lost when the old process closes its copies. Listeners the new
/// process does not adopt are closed by it; with `net.ipv4.tcp_migrate_req=1` the kernel moves their
/// queued connections to a live listener of the group (StraitSteer's migrate-aware program chooses
/// which). Extra descriptors (StraitSteer's BPF maps, say) travel in the same message, and so does
/// the offer's own socket: a successor that offers at the same path keeps accepting on the very
/// socket the path names, so the path changes owner in the same step as the listeners, never
/// names a process that stopped offering, and is never unlinked and bound again.
///
/// The exchange, on a `SOCK_SEQPACKET` Unix socket at a path the old process listens on:
/// ```
/// new → old  "take"
/// old → new  "strait-handover 2 <listeners> <extras> 1\n<note>"  + listeners, extras, the offer socket (SCM_RIGHTS)
/// new → old  "ready"        (the new process accepts on every listener it keeps)
/// old → new  "stopping"     (the old process no longer accepts; it drains its connections)
/// ```
/// A client may instead ask `"who"`; the offer answers `"strait-handover 2 pid <pid>"` (which
/// process offers here now: `strait proxy reload` checks a pid file with it before signalling).
///
/// An offer serves takers one at a time until one confirms: a taker that gives up or dies before
/// `ready` (a successor with a bad configuration, say) changes nothing, and the next one is served.
/// Every wait has a deadline and ends with ``HandOverError/timedOut(path:awaiting:timeout:)``,
/// which says what was awaited. Failures are ``HandOverError``s: a failed system call keeps its
/// errno (``HandOverError/system(_:)``), and the protocol's own failures have cases of their own.
public enum ListenerHandOver {
    /// The protocol version in every header; a peer speaking another is refused with both named.
    static let version = 2

    /// What the old process offers to one taker: its listeners, extra descriptors, and a note (free
    /// text, e.g. JSON naming the extras). The taker receives descriptors of its own for the same
    /// open files.
    public struct Package: ~Copyable, Sendable {
        /// The offerer's listening sockets, lent for the send: they stay the offerer's, which goes on
        /// accepting on them until the taker confirms.
        public var listeners: [CInt]
        /// Descriptors made for this one hand-over (duplicates of BPF maps, say), owned by the
        /// package: closed once sent, or when the send fails.
        public var extras: OwnedDescriptors
        /// Free text for the taker (JSON naming the extras, say), sent after the header line.
        public var note: String

        /// A package lending `listeners` and owning `extras` (closed once sent).
        public init(listeners: [CInt], extras: consuming OwnedDescriptors = OwnedDescriptors(), note: String = "") {
            self.listeners = listeners
            self.extras = extras
            self.note = note
        }
    }

    /// What an offer says about itself when asked `"who"`.
    public struct OfferStatus: Sendable, Equatable {
        /// The process offering now.
        public var pid: pid_t
        /// How many successors it started have failed (exited before taking over) so far; a restart
        /// that sees this grow knows at once that its successor is gone.
        public var failedSuccessors: Int
        /// What the last of them reported ("exited with status 1"), empty when none failed.
        public var lastFailure: String
    }

    /// Connects to the offer at `path` and takes its descriptors. The caller owns the listeners and
    /// extras in the receipt: adopt the listeners into a server, then call ``Receipt/confirm(timeout:)``
    /// so the old process stops accepting. Waits at most `timeout` for the offer's answer; throws
    /// ``HandOverError/nothingOffers(path:_:)`` when nothing offers at `path`.
    public static func take(from path: String, timeout: Duration = .seconds(5)) throws(HandOverError) -> Receipt {
        let control = try connect(to: path, timeout: timeout)
        try send(control, "take")
        var message = try receive(control, path: path, timeout: timeout, awaiting: "listeners from the process offering there")
        let text = String(decoding: message.bytes, as: UTF8.self)
        let header = text.prefix { $0 != "\n" }.split(separator: " ")
        guard header.count == 5, header[0] == "strait-handover", header[1] == "\(version)",
            let listenerCount = Int(header[2]), let extraCount = Int(header[3]), let offerCount = Int(header[4]),
            offerCount <= 1, listenerCount + extraCount + offerCount == message.descriptors.count
        else {
            throw .unexpectedAnswer(path: path, expected: "'strait-handover \(version) …' and its descriptors", answer: String(text.prefix(40)))
        }
        let note = text.firstIndex(of: "\n").map { String(text[text.index(after: $0)...]) } ?? ""
        let listeners = message.descriptors.takeFirst(listenerCount)
        let extras = message.descriptors.takeFirst(extraCount)
        return Receipt(control: control, path: path, listeners: listeners, extras: extras, offerSocket: message.descriptors.takeFirst(), note: note)
    }

    /// The process offering at `path` now (it answers `"who"`), or nil when nothing does: no file,
    /// or a socket file left by a process that has exited. Throws when `path` is not a socket, or
    /// when something accepts there but does not answer within `timeout`.
    public static func owner(of path: String, timeout: Duration = .seconds(2)) throws(HandOverError) -> pid_t? {
        try status(of: path, timeout: timeout)?.pid
    }

    /// What the offer at `path` says about itself (see ``OfferStatus``), or nil when nothing offers
    /// there; throws as ``owner(of:timeout:)`` does.
    public static func status(of path: String, timeout: Duration = .seconds(2)) throws(HandOverError) -> OfferStatus? {
        let control: OwnedDescriptor
        do {
            control = try connect(to: path, timeout: timeout)
        } catch {
            if case .nothingOffers = error { return nil }
            throw error
        }
        try send(control, "who")
        let text = String(decoding: try receive(control, path: path, timeout: timeout, awaiting: "answer from the process listening there").bytes, as: UTF8.self)
        let words = text.prefix { $0 != "\n" }.split(separator: " ")
        guard words.count == 4 || words.count == 6, words[0] == "strait-handover", words[2] == "pid", let pid = pid_t(words[3]) else {
            throw .unexpectedAnswer(path: path, expected: "a Strait offer's 'strait-handover \(version) pid …'", answer: String(text.prefix(40)))
        }
        let failed = words.count == 6 && words[4] == "failed" ? Int(words[5]) ?? 0 : 0
        let last = text.firstIndex(of: "\n").map { String(text[text.index(after: $0)...]) } ?? ""
        return OfferStatus(pid: pid, failedSuccessors: failed, lastFailure: last)
    }

    /// A blocking `SOCK_SEQPACKET` connection to `path`, with sends bounded by `timeout`.
    private static func connect(to path: String, timeout: Duration) throws(HandOverError) -> OwnedDescriptor {
        var info = stat()
        if stat(path, &info) == 0 && (info.st_mode & S_IFMT) != S_IFSOCK {
            throw .notASocket(path: path)
        }
        let socket = try system { () throws(SystemCallError) in
            let socket = OwnedDescriptor(taking: try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue)))
            let fd = socket.rawValue
            try SocketCall.setNonBlocking(fd, false)
            var value = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
            try systemCall("setsockopt(SO_SNDTIMEO)") { setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size)) }
            return socket
        }
        do throws(SystemCallError) {
            try SocketCall.connect(socket.rawValue, to: .unix(path: path))
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused {
            throw .nothingOffers(path: path, error)
        } catch {
            throw .system(error)
        }
        return socket
    }

    /// Runs `body`, turning its failed system call into ``HandOverError/system(_:)``.
    static func system<Value: ~Copyable>(_ body: () throws(SystemCallError) -> Value) throws(HandOverError) -> Value {
        do throws(SystemCallError) {
            return try body()
        } catch {
            throw .system(error)
        }
    }

    /// Sends `text` (a message with no descriptors) on the exchange's socket.
    static func send(_ socket: borrowing OwnedDescriptor, _ text: String) throws(HandOverError) {
        let fd = socket.rawValue
        try system { () throws(SystemCallError) in try SocketCall.send(fd, bytes: Array(text.utf8), descriptors: []) }
    }

    /// One message from `socket`, waiting at most `timeout` for it; ``HandOverError/timedOut(path:awaiting:timeout:)``
    /// names what was awaited. An empty message is the peer closing. The caller owns the
    /// descriptors that came with it (dropping the list closes any it does not take).
    static func receive(_ socket: borrowing OwnedDescriptor, path: String, timeout: Duration, awaiting what: String) throws(HandOverError) -> Message {
        let fd = socket.rawValue
        guard try system({ () throws(SystemCallError) in try SocketCall.waitReadable([fd], timeout: timeout) }) != nil else {
            throw .timedOut(path: path, awaiting: what, timeout: timeout)
        }
        let (bytes, descriptors) = try system { () throws(SystemCallError) in try SocketCall.receive(fd, capacity: 65536) }
        return Message(bytes: bytes, descriptors: OwnedDescriptors(taking: descriptors))
    }

    /// One message of the exchange, with the descriptors that came with it (owned).
    struct Message: ~Copyable {
        var bytes: [UInt8]
        var descriptors: OwnedDescriptors
    }

    /// What the new process received. Owns, until they are taken, the control connection (for
    /// ``confirm(timeout:)``), the listeners, the extras and the offer socket: whatever the caller
    /// does not take is closed with the receipt, so a successor that gives up half-way leaks nothing.
    public final class Receipt: @unchecked Sendable {
        private let control: OwnedDescriptor
        /// The path the listeners were taken from.
        public let path: String
        /// The listening sockets' numbers, in the offerer's order (one per loop for a reuseport
        /// server), to look at (cookies, addresses). Owned by the receipt until
        /// ``takeListeners()`` or ``adoptListeners()``; never close them directly.
        public let listenerDescriptors: [CInt]
        /// The offerer's note (``Package/note``).
        public let note: String
        private let listeners: Mutex<OwnedDescriptors>
        private let extras: Mutex<OwnedDescriptors>
        private let offerSocket: Mutex<OwnedDescriptor?>
        private var confirmed = false

        init(
            control: consuming OwnedDescriptor, path: String, listeners: consuming OwnedDescriptors, extras: consuming OwnedDescriptors,
            offerSocket: consuming OwnedDescriptor?, note: String
        ) {
            self.control = control
            self.path = path
            listenerDescriptors = listeners.rawValues
            self.listeners = Mutex(listeners)
            self.extras = Mutex(extras)
            self.offerSocket = Mutex(offerSocket)
            self.note = note
        }

        /// The listening sockets, in the offerer's order, now the caller's; empty once taken.
        public func takeListeners() -> OwnedDescriptors { listeners.withLock { $0.takeFirst($0.count) } }

        /// The extra descriptors, in the offerer's order, now the caller's; empty once taken.
        public func takeExtras() -> OwnedDescriptors { extras.withLock { $0.takeFirst($0.count) } }

        /// The offer socket that came with the listeners, for an ``Offer`` that continues at the
        /// same path; the receipt no longer owns it. Nil once taken.
        func takeOfferSocket() -> OwnedDescriptor? { offerSocket.withLock { $0.take() } }

        /// The listeners as ``Listener``s for a ``Server``, which owns them from here on. On an
        /// error, the ones not yet adopted are closed.
        public func adoptListeners() throws(HandOverError) -> [Listener] {
            var taken = takeListeners()
            var adopted: [Listener] = []
            do {
                while let next = taken.takeFirst() { adopted.append(try Listener.adopt(next)) }
            } catch {
                // Closed, not `close()`d: a Unix listener's path belongs to the old process still.
                for listener in adopted { closeDescriptor(listener.fd) }
                throw error
            }
            return adopted
        }

        /// Tells the old process that this one accepts on the listeners now, and waits (at most
        /// `timeout`) until it has stopped accepting. Call after the new server is running.
        public func confirm(timeout: Duration = .seconds(10)) throws(HandOverError) {
            guard !confirmed else { return }
            confirmed = true
            try send(control, "ready")
            let answer = try receive(control, path: path, timeout: timeout, awaiting: "'stopping' from the old process").bytes
            guard answer == Array("stopping".utf8) else {
                throw .unexpectedAnswer(path: path, expected: "'stopping'", answer: String(decoding: answer.prefix(40), as: UTF8.self))
            }
        }
    }

    /// The old process's side: listens at `path` and hands `package()` to takers, one at a time,
    /// until one confirms; then closes its copy of the offer socket, calls `stopAccepting` (which
    /// must stop accepting before it returns; the connections may drain afterwards) and answers.
    /// A taker that fails is reported to `takerFailed` and the offer goes on. ``close()`` cancels.
    ///
    /// The offer owns its socket and a thread (blocked in `poll`, no CPU while it waits). After a
    /// hand-over the socket (and so the path) belongs to the successor alone: this process closed
    /// its descriptor the moment the successor confirmed, so every later client (a `"who"`, the
    /// next taker) can only reach the successor, and ``close()`` does not unlink the path.
    public final class Offer: @unchecked Sendable {
        /// The Unix socket path the offer listens at.
        public let path: String
        /// This process's descriptor of the offer socket, shared with the thread; dropped (closed)
        /// when a successor confirms, or by ``close()``.
        private let socket: SharedSocket
        /// A pipe written to cancel the offer's wait in ``close()``: the thread polls the read end.
        private let wakeRead: OwnedDescriptor
        private let wakeWrite: OwnedDescriptor
        /// The socket file's inode: a later offer at the same path (not a successor's) is not ours to remove.
        private let inode: UInt64
        private let thread: Mutex<pthread_t?>
        private let result = OutcomeBox()
        private let failures = FailureRecord()

        final class OutcomeBox: Sendable {
            let value = Mutex<Result<Void, HandOverError>?>(nil)
        }

        /// The offer socket while this process holds it: the thread reads its number, and closes it
        /// on hand-over; ``close()`` closes it if the thread did not.
        final class SharedSocket: Sendable {
            let descriptor: Mutex<OwnedDescriptor?>
            let rawValue: CInt
            init(_ socket: consuming OwnedDescriptor) {
                rawValue = socket.rawValue
                descriptor = Mutex(socket)
            }
            func close() { descriptor.withLock { $0 = nil } }
        }

        /// Successors that failed before taking over, for `"who"` answers.
        final class FailureRecord: Sendable {
            let value = Mutex<(count: Int, last: String)>((0, ""))
        }

        /// Offers at `path`. With `continuing` (the receipt of this process's own take-over from the
        /// same path), the offer goes on accepting on the socket that came with it, so the path
        /// never changes hands between processes. Otherwise the offer binds a fresh socket beside
        /// `path` and renames it over `path` in one step; it refuses, with `EADDRINUSE` and the
        /// other process's pid, when a live offer already answers there
        /// (``HandOverError/pathInUse(path:owner:)``).
        public init(
            path: String, continuing receipt: Receipt? = nil, package: @escaping @Sendable () -> Package,
            stopAccepting: @escaping @Sendable () -> Void, takerFailed: @escaping @Sendable (HandOverError) -> Void = { _ in }
        ) throws(HandOverError) {
            self.path = path
            if receipt?.path == path, let inherited = receipt?.takeOfferSocket() {
                socket = SharedSocket(inherited)
            } else {
                socket = SharedSocket(try Self.bindFresh(at: path))
            }
            let pipe = try ListenerHandOver.system { () throws(SystemCallError) in try RelayCall.pipe(size: 4096) }
            wakeRead = pipe.readEnd
            wakeWrite = pipe.writeEnd
            inode = Self.inode(of: path) ?? 0
            thread = Mutex(nil)
            let (result, socket, wake, failures) = (self.result, self.socket, wakeRead.rawValue, self.failures)
            let started = EventLoopGroup.startThread(name: "strait-handover") {
                // Recorded as soon as this process stopped accepting, before the successor hears it.
                let handedOver = { result.value.withLock { $0 = .success(()) } }
                let outcome = Result { () throws(HandOverError) in
                    try Self.serve(
                        socket.rawValue, wake: wake, path: path, package: package, failures: failures,
                        confirmed: {
                            // No client may reach this process at the path any more: the successor
                            // holds the one other descriptor of the socket, and answers alone.
                            socket.close()
                            stopAccepting()
                            handedOver()
                        },
                        takerFailed: takerFailed)
                }
                result.value.withLock { $0 = outcome }
            }
            thread.withLock { $0 = started }
        }

        deinit { close() }

        /// nil while offering; `.success` once a successor took over; a failure if the offer's
        /// socket broke (or it was closed).
        public var outcome: Result<Void, HandOverError>? { result.value.withLock { $0 } }

        /// Whether a successor took the listeners (and this offer's socket).
        public var handedOver: Bool { if case .success = outcome { true } else { false } }

        /// Notes a successor this process started that failed before taking over (it exited, say):
        /// `"who"` answers carry the count and `description`, so the `restart` that is waiting
        /// learns of it at once (``ListenerHandOver/status(of:timeout:)``).
        public func recordFailedSuccessor(_ description: String) {
            failures.value.withLock { $0 = ($0.count + 1, description) }
        }

        /// Stops offering (wakes the offer's thread), waits for it, closes this process's copy of
        /// the socket, and removes the path unless a successor took it over.
        public func close() {
            guard let running = thread.withLock({ current in defer { current = nil }; return current }) else { return }
            var byte: UInt8 = 1
            _ = Glibc.write(wakeWrite.rawValue, &byte, 1)
            pthread_join(running, nil)
            socket.close()
            if !handedOver && Self.inode(of: path) == inode { try? SocketCall.unlinkIfPresent(path) }
        }

        static func inode(of path: String) -> UInt64? {
            var info = stat()
            return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
        }

        /// A new listening socket at `path`: refused if a live offer answers there; otherwise bound
        /// at a private name in the same directory and renamed over `path` (replacing a stale file
        /// from a process that exited, with no moment where `path` is missing).
        private static func bindFresh(at path: String) throws(HandOverError) -> OwnedDescriptor {
            let current: pid_t?
            do {
                current = try ListenerHandOver.owner(of: path)
            } catch {
                if case .timedOut = error { throw .pathInUse(path: path, owner: nil) }
                throw error
            }
            if let current { throw .pathInUse(path: path, owner: current) }
            return try system { () throws(SystemCallError) in try bindFresh(beside: path) }
        }

        /// A listening socket bound at a private name beside `path`, then renamed over it.
        private static func bindFresh(beside path: String) throws(SystemCallError) -> OwnedDescriptor {
            let fresh = "\(path).\(getpid()).new"
            try SocketCall.unlinkIfPresent(fresh)
            let socket = OwnedDescriptor(taking: try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue)))
            do throws(SystemCallError) {
                try SocketCall.setNonBlocking(socket.rawValue, false)
                try SocketCall.bind(socket.rawValue, to: .unix(path: fresh))
                _ = chmod(fresh, 0o600)
                try SocketCall.listen(socket.rawValue, backlog: 16)
                try SocketCall.rename(fresh, to: path)
                return socket
            } catch {
                try? SocketCall.unlinkIfPresent(fresh)
                throw error
            }
        }

        /// The offer's thread: serves one client at a time until a hand-over completes (returns)
        /// or the offer is cancelled (throws ``HandOverError/cancelled(path:)``).
        private static func serve(
            _ listener: CInt, wake: CInt, path: String, package: () -> Package, failures: FailureRecord, confirmed: () -> Void,
            takerFailed: (HandOverError) -> Void
        ) throws(HandOverError) {
            while true {
                guard try system({ () throws(SystemCallError) in try SocketCall.waitReadable([listener, wake], timeout: nil) }) == 0 else {
                    throw .cancelled(path: path)
                }
                let control: OwnedDescriptor
                do throws(SystemCallError) {
                    control = OwnedDescriptor(taking: try systemCall("accept(hand-over)") { accept(listener, nil, nil) })
                } catch where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem || error.errno == .noBufferSpace {
                    takerFailed(.system(error))
                    usleep(100_000)  // no descriptor to accept into: let the process free some
                    continue
                } catch {
                    throw .system(error)
                }
                do {
                    if try serveOne(control, path: path, listener: listener, package: package, failures: failures, confirmed: confirmed) { return }
                } catch {
                    takerFailed(error)
                }
            }
        }

        /// One client: answers `"who"`, or runs a hand-over. Returns true when a successor confirmed
        /// and this process stopped accepting.
        private static func serveOne(
            _ control: borrowing OwnedDescriptor, path: String, listener: CInt, package: () -> Package, failures: FailureRecord, confirmed: () -> Void
        ) throws(HandOverError) -> Bool {
            let request = try receive(control, path: path, timeout: .seconds(5), awaiting: "request from the client").bytes
            if request.isEmpty { return false }  // a client that only checked whether the offer is live
            if request == Array("who".utf8) {
                let (count, last) = failures.value.withLock { $0 }
                try send(control, "strait-handover \(version) pid \(getpid()) failed \(count)\n\(last)")
                return false
            }
            guard request == Array("take".utf8) else {
                throw .unexpectedAnswer(path: path, expected: "the request 'take' or 'who'", answer: String(decoding: request.prefix(40), as: UTF8.self))
            }
            let offered = package()
            let header = "strait-handover \(version) \(offered.listeners.count) \(offered.extras.count) 1\n\(offered.note)"
            let descriptors = offered.listeners + offered.extras.rawValues + [listener]
            let fd = control.rawValue
            try system { () throws(SystemCallError) in try SocketCall.send(fd, bytes: Array(header.utf8), descriptors: descriptors) }
            _ = consume offered  // the extras made for this taker are closed: it has its own now
            // The successor starts its server (binding new listeners, loading programs) before it confirms.
            let ready = try receive(control, path: path, timeout: .seconds(60), awaiting: "confirmation from the new process").bytes
            guard ready == Array("ready".utf8) else { throw .takerGaveUp(path: path) }
            confirmed()
            // The hand-over is done from here on; a successor gone before hearing it changes nothing.
            try? send(control, "stopping")
            return true
        }
    }
}


extension Server {
    /// Offers this server's listeners at `path` for a new process to take over.
    /// When the new process confirms, this server stops accepting at once and drains (see
    /// ``drain(idleGrace:deadline:)``); `drained` is called when its last connection closed. Keep
    /// the returned offer alive until the hand-over; close it to cancel. `continuing`: see
    /// ``ListenerHandOver/Offer/init(path:continuing:package:stopAccepting:takerFailed:)``.
    public func offerHandOver(
        at path: String, continuing receipt: ListenerHandOver.Receipt? = nil, note: String = "",
        idleGrace: Duration = .milliseconds(500), drainDeadline: Duration, drained: @escaping @Sendable () -> Void = {}
    ) throws(HandOverError) -> ListenerHandOver.Offer {
        let listeners = listenerDescriptors
        return try ListenerHandOver.Offer(
            path: path, continuing: receipt,
            package: { ListenerHandOver.Package(listeners: listeners, note: note) },
            stopAccepting: retiring(idleGrace: idleGrace, drainDeadline: drainDeadline, drained: drained))
    }

    /// What an offer calls when a successor confirmed: stop accepting now, then drain in the
    /// background and call `drained` after the last connection closed.
    public func retiring(idleGrace: Duration, drainDeadline: Duration, drained: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        { [self] in
            stopAcceptingNow()
            Task {
                await drain(idleGrace: idleGrace, deadline: drainDeadline)
                drained()
            }
        }
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
