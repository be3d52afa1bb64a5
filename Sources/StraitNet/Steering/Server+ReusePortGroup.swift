import StraitSystem

extension Server {
    /// The listening sockets this server accepts on, one per acceptor (one per loop with
    /// `reusePort`). Still owned by the server: duplicate them (or send them, which duplicates)
    /// before the server stops, which closes them.
    public var listenerDescriptors: [CInt] { acceptors.map(\.listener.fd) }

    /// Binds one `SO_REUSEPORT` listener per loop on `address` and has `steering` choose among them
    /// (every listener joins it before the server accepts). The listeners leave the steering when the
    /// server stops accepting. `address` with port 0 gets one kernel-chosen port for the whole group.
    public static func reusePortGroup(
        address: SocketAddress, group: EventLoopGroup, steering: (any SocketSteering)?,
        configuration: ServerConfiguration = ServerConfiguration(), handlers: ConnectionHandlers
    ) throws -> Server {
        var listeners: [Listener] = []
        do {
            let first = try Listener.tcp(address, reusePort: true, backlog: configuration.backlog)
            listeners.append(first)
            for _ in 1..<group.loops.count {
                listeners.append(try Listener.tcp(first.address, reusePort: true, backlog: configuration.backlog))
            }
            for listener in listeners { try steering?.memberJoined(listener.fd, weight: 1) }
        } catch {
            for listener in listeners { listener.close() }
            throw error
        }
        return try Server(listeners: listeners, group: group, configuration: configuration, handlers: handlers)
    }
}
