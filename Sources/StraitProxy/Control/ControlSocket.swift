import Foundation
import StraitNet
import StraitSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A running proxy's control socket (HAProxy's stats socket, for Strait): a Unix stream socket,
/// mode 0600, beside the pid file, that answers one command per connection with one JSON document
/// and closes. `strait proxy reload`, `status` and `drain` are its clients.
///
/// ```
/// client → proxy  "reload\n" | "status\n" | "drain 127.0.0.1:5201\n" | "undrain 127.0.0.1:5201\n"
/// proxy → client  {"applied":false,"errors":["strait.yaml:5:15: …"],…}   then EOF
/// ```
/// A failed command answers ``ControlFailure`` (`{"error":"…"}`). A request is one line of at
/// most ``maximumRequestBytes``; a client that sends nothing for 10 s is closed.
///
/// Served on one StraitNet loop of its own: a reload blocks that loop while it checks and applies
/// the file, never a proxy loop. A first start binds the socket beside `path` and renames it over
/// it. In `strait proxy restart` the listening socket itself travels to the successor with the
/// other listeners (``init(adopting:path:controller:)``): the path names the same socket (same
/// inode) throughout, so a client never finds it missing or refused, and connections queued while
/// the processes change places are answered by the successor. The old process calls
/// ``stopAccepting()`` when the successor confirms and from then on never removes the path; on
/// ``close()`` the path is removed only if this socket still owns it.
public final class ControlSocket: @unchecked Sendable {
    /// Where it listens.
    public let path: String
    /// The listening socket, lent to a hand-over package (``ListenerHandOver/Package``); it stays
    /// this object's server's until ``stopAccepting()``.
    public let listeningDescriptor: CInt
    private let group: EventLoopGroup
    private let server: Server
    private let inode: ino_t
    /// Set by ``stopAccepting()``: the socket (and so the path) is a successor's from then on.
    private let handedOver = Atomic<Bool>(false)

    /// The longest request line read.
    public static let maximumRequestBytes = 4096

    /// Listens at `path` (replacing a file there) and answers with `controller`.
    public convenience init(path: String, controller: ProxyController) throws(SystemCallError) {
        let temporary = "\(path).\(getpid()).new"
        let listener = try Listener.unix(path: temporary)
        do {
            try systemCall("chmod(\(temporary))") { chmod(temporary, 0o600) }
            try SocketCall.rename(temporary, to: path)
        } catch {
            listener.close()
            throw error
        }
        try self.init(listener: listener, path: path, controller: controller)
    }

    /// Answers with `controller` on `descriptor`, the listening control socket a predecessor handed
    /// over (the one `path` names); owns it from here on. Binds nothing and renames nothing.
    public convenience init(adopting descriptor: consuming OwnedDescriptor, path: String, controller: ProxyController) throws(HandOverError) {
        let listener = try Listener.adopt(descriptor)
        do throws(SystemCallError) {
            try self.init(listener: listener, path: path, controller: controller)
        } catch {
            throw .system(error)
        }
    }

    /// Serves `listener`, which `path` names; closes it on an error.
    private init(listener: Listener, path: String, controller: ProxyController) throws(SystemCallError) {
        self.path = path
        listeningDescriptor = listener.fd
        var info = stat()
        inode = stat(path, &info) == 0 ? info.st_ino : 0
        do {
            group = try EventLoopGroup(loopCount: 1)
        } catch {
            listener.close()
            throw error
        }
        var configuration = ServerConfiguration()
        configuration.connection.inputLimit = Self.maximumRequestBytes
        configuration.connection.readIdleTimeout = .seconds(10)
        let handlers = ConnectionHandlers(onRequest: { connection in
            let reader = connection.reader
            guard let length = reader.distance(to: UInt8(ascii: "\n")) else { return }
            let line = try reader.readString(length)
            try reader.skip(reader.readableBytes)
            let answer = Self.answer(line, controller: controller)
            connection.writer.write(answer)
            connection.writer.write(string: "\n")
            connection.flush()
            connection.close()
        })
        do {
            server = try Server(listeners: [listener], group: group, configuration: configuration, handlers: handlers)
        } catch {
            group.shutdown()
            throw error
        }
    }

    /// The JSON answer to one request line.
    static func answer(_ line: String, controller: ProxyController) -> Data {
        let words = line.trimmingCharacters(in: .whitespaces).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            switch (words.first, words.count) {
            case ("reload", 1): return try encoder.encode(controller.reload())
            case ("status", 1): return try encoder.encode(controller.status())
            case ("drain", 2): return try encoder.encode(try controller.drain(words[1], draining: true))
            case ("undrain", 2): return try encoder.encode(try controller.drain(words[1], draining: false))
            default:
                throw ControlFailure("unknown command `\(String(line.prefix(64)).escapingControlCharacters)`; expected reload, status, drain HOST:PORT or undrain HOST:PORT")
            }
        } catch let failure as ControlFailure {
            return (try? encoder.encode(failure)) ?? Data()
        } catch {
            return (try? encoder.encode(ControlFailure("\(error)"))) ?? Data()
        }
    }

    /// Stops accepting at once (a request already accepted is still answered): for the hand-over,
    /// when the successor that took ``listeningDescriptor`` confirms, so every later connection
    /// reaches the successor. The path is the successor's from here on; ``close()`` leaves it.
    /// Not from the control socket's own loop.
    public func stopAccepting() {
        handedOver.store(true, ordering: .releasing)
        server.stopAccepting()
    }

    /// Stops answering and removes the path if it is still this socket's (not handed over, same
    /// inode). Call once.
    public func close() async {
        await server.shutdown(gracePeriod: .seconds(1))
        group.shutdown()
        guard !handedOver.load(ordering: .acquiring) else { return }
        var info = stat()
        if stat(path, &info) == 0 && info.st_ino == inode { try? SocketCall.unlinkIfPresent(path) }
    }

    /// Whether a process answers at `path` now (a stale file left by an exited one does not).
    public static func isLive(_ path: String) -> Bool {
        guard let fd = try? connect(path) else { return false }
        closeDescriptor(fd)
        return true
    }

    /// Sends `command` to the proxy at `path` and returns its JSON answer, waiting at most
    /// `timeout` (a reload of a large file takes longer than a status).
    public static func send(_ command: String, to path: String, timeout: Duration = .seconds(30)) throws(ControlFailure) -> Data {
        let fd: CInt
        do { fd = try connect(path) } catch {
            let advice = error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused
                ? "no proxy answers there: is `strait proxy` running with this --control-socket?" : "\(error)"
            throw ControlFailure("cannot reach the proxy's control socket \(path): \(advice)")
        }
        defer { closeDescriptor(fd) }
        let request = Array((command + "\n").utf8)
        var answer: [UInt8] = []
        do {
            var sent = 0
            while sent < request.count {
                guard case .done(let count) = try request.withUnsafeBytes({ bytes throws(SystemCallError) in
                    try SocketCall.write(fd, bytes.baseAddress! + sent, bytes.count - sent)
                }) else { continue }
                sent += count
            }
            let deadline = ContinuousClock.now + timeout
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let left = deadline - ContinuousClock.now
                guard left > .zero, try SocketCall.waitReadable([fd], timeout: left) != nil else {
                    throw ControlFailure("the proxy at \(path) did not answer `\(command)` within \(timeout)")
                }
                guard case .done(let count) = try chunk.withUnsafeMutableBytes({ bytes throws(SystemCallError) in
                    try SocketCall.read(fd, bytes.baseAddress!, bytes.count)
                }) else { continue }
                if count == 0 { break }
                answer += chunk[..<count]
                guard answer.count <= 16 << 20 else { throw ControlFailure("the answer from \(path) is over 16 MiB; not a Strait proxy?") }
            }
        } catch let failure as ControlFailure {
            throw failure
        } catch {
            throw ControlFailure("talking to the proxy at \(path): \(error)")
        }
        if let failure = try? JSONDecoder().decode(ControlFailure.self, from: Data(answer)) { throw failure }
        return Data(answer)
    }

    /// A blocking stream connection to `path`.
    private static func connect(_ path: String) throws(SystemCallError) -> CInt {
        let fd = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_STREAM.rawValue))
        do {
            try SocketCall.setNonBlocking(fd, false)
            try SocketCall.connect(fd, to: .unix(path: path))
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }
}
