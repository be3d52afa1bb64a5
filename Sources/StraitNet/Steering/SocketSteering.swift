import StraitSystem

/// Chooses which socket of a `SO_REUSEPORT` group receives each new connection or datagram.
///
/// StraitNet calls it as sockets join and leave; the choice itself happens in the kernel (StraitSteer
/// implements this with an `sk_reuseport` BPF program). Without one, the kernel's hash of the
/// 4-tuple decides. Calls come from any thread and must be cheap enough to make while traffic flows
/// (StraitSteer's cost a few bpf(2) calls each).
public protocol SocketSteering: AnyObject, Sendable {
    /// `fd` is bound (and listening, for TCP) in the group: start choosing it. It stays the
    /// caller's descriptor; the steering may keep a reference to the socket, not to the number.
    func memberJoined(_ fd: CInt, weight: Int) throws
    /// `fd` is about to stop receiving: choose other members from now on. Called before the socket
    /// is drained and closed, so nothing new is steered to a socket that is going away.
    func memberLeaving(_ fd: CInt) throws
}
