import StraitNet
import StraitSystem

/// The listening sockets a proxy takes from its predecessor in a restart, by role: one per
/// listener address, the metrics endpoint's and the control socket's. Owns every one of them until ``Proxy`` takes it
/// to accept on; whatever is still here when the value goes away (a listener the new configuration
/// dropped) is closed then, so a restart never leaks a socket and never closes one twice.
///
/// The roles travel in the hand-over's note, one line per descriptor in order (`listener ADDRESS`,
/// `metrics ADDRESS` or `control PATH`): ``handOverNote(listeners:metrics:control:)`` writes it,
/// ``init(note:descriptors:)`` reads it.
public struct InheritedSockets: ~Copyable, Sendable {
    private var listeners: [SocketAddress: CInt] = [:]
    private var metrics: CInt?
    private var control: (path: String, fd: CInt)?

    /// Nothing inherited: a first start.
    public init() {}

    /// Sorts a hand-over's descriptors by the roles its note gives them. Descriptors the note does
    /// not name (a newer predecessor's) are closed here.
    public init(note: String, descriptors: consuming OwnedDescriptors) {
        for line in note.split(separator: "\n") {
            guard let socket = descriptors.takeFirst() else { break }
            let words = line.split(separator: " ", maxSplits: 1)
            switch (words.first, words.count == 2 ? SocketAddress(parsing: String(words[1])) : nil) {
            case ("listener", let address?) where listeners[address] == nil: listeners[address] = socket.take()
            case ("metrics", .some) where metrics == nil: metrics = socket.take()
            case ("control", _) where words.count == 2 && control == nil: control = (String(words[1]), socket.take())
            default: socket.close()
            }
        }
    }

    deinit {
        listeners.values.forEach(closeDescriptor)
        if let metrics { closeDescriptor(metrics) }
        if let control { closeDescriptor(control.fd) }
    }

    /// Duplicates of `sockets` (another proxy's ``Proxy/listenerSockets`` in this process: an
    /// in-process restart); the originals stay their owner's. On an error, the duplicates made so
    /// far are closed.
    public init(duplicating sockets: [(address: SocketAddress, fd: CInt)]) throws(SystemCallError) {
        for (address, fd) in sockets where listeners[address] == nil {
            listeners[address] = try OwnedDescriptor.duplicating(fd).take()
        }
    }

    /// The listening socket bound to `address`, now the caller's; nil when none came for it.
    public mutating func takeListener(at address: SocketAddress) -> OwnedDescriptor? {
        listeners.removeValue(forKey: address).map(OwnedDescriptor.init(taking:))
    }

    /// The metrics endpoint's listening socket, now the caller's; nil when none came.
    public mutating func takeMetrics() -> OwnedDescriptor? {
        defer { metrics = nil }
        return metrics.map(OwnedDescriptor.init(taking:))
    }

    /// The control socket's listening socket, now the caller's, if the predecessor's served
    /// `path`; nil when none came or it served another path (then it is closed with this value,
    /// and the caller binds `path` anew).
    public mutating func takeControl(at path: String) -> OwnedDescriptor? {
        guard let control, control.path == path else { return nil }
        self.control = nil
        return OwnedDescriptor(taking: control.fd)
    }

    /// The note that names, in order, the descriptors a proxy offers its successor: its listeners,
    /// then its metrics endpoint, then its control socket (by path).
    public static func handOverNote(listeners: [SocketAddress], metrics: SocketAddress?, control: String?) -> String {
        (listeners.map { "listener \($0)" } + (metrics.map { ["metrics \($0)"] } ?? []) + (control.map { ["control \($0)"] } ?? []))
            .joined(separator: "\n")
    }
}
