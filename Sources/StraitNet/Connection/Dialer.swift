import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Opens client connections on a group's loops, with a connect timeout.
public struct Dialer: Sendable {
    /// The loops new connections are placed on, round robin; not owned by the dialer.
    public let group: EventLoopGroup
    /// Options for the connections it opens (handler execution, limits, timeouts).
    public var options: ConnectionOptions

    /// A dialer onto `group`'s loops; it holds no descriptor until it connects.
    public init(group: EventLoopGroup, options: ConnectionOptions = ConnectionOptions()) {
        self.group = group
        self.options = options
    }

    /// Connects to `address` on the next loop and calls `completion` on that loop with the
    /// connection (after its `onConnect`), or with ``NetError/closed(_:)`` carrying
    /// ``CloseReason/connectTimeout`` or ``CloseReason/connectFailed(_:)``.
    public func connect(
        to address: SocketAddress, timeout: Duration, handlers: ConnectionHandlers,
        completion: @escaping @Sendable (Result<Connection, NetError>) -> Void
    ) {
        let loop = group.next()
        let fd: CInt
        do throws(SystemCallError) {
            fd = try SocketCall.socket(domain: address.family, type: CInt(SOCK_STREAM.rawValue))
            if options.noDelay, case .ip = address {
                try SocketCall.setOption(fd, level: CInt(IPPROTO_TCP), name: EpollCall.tcpNoDelay, value: 1)
            }
        } catch {
            completion(.failure(.system(error)))
            return
        }
        let options = self.options
        loop.execute {
            let connection = Connection(fd: fd, loop: loop, state: .connecting, options: options, handlers: handlers, owner: nil)
            connection.connectCompletion = completion
            do throws(SystemCallError) {
                // Registered before connect: the completion arrives as the first writable edge.
                try loop.register(connection, events: Connection.pollEvents)
            } catch {
                closeDescriptor(fd)
                connection.connectCompletion = nil
                completion(.failure(.system(error)))
                return
            }
            do throws(SystemCallError) {
                _ = try SocketCall.connect(fd, to: address)
            } catch {
                connection.close(reason: .connectFailed(error))
                return
            }
            loop.schedule(at: loop.now + timeout.nanoseconds, target: connection, tag: Connection.TimerTag.connect)
        }
    }

    /// Connects and returns the established connection; throws ``NetError`` on failure or timeout.
    public func connect(to address: SocketAddress, timeout: Duration, handlers: ConnectionHandlers) async throws(NetError) -> Connection {
        let result = await withCheckedContinuation { continuation in
            connect(to: address, timeout: timeout, handlers: handlers) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }
}
