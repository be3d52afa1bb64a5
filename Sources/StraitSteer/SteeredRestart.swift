import StraitNet
import StraitSystem

extension Server {
    /// Offers this server's listeners *and* its steering group at `path` for the next process to
    /// take over (see the README, "Restarting a server in place"). The steering's program and map
    /// descriptors are duplicated when a taker arrives, so the members it names are current; the
    /// package owns the duplicates and closes them once sent. When the taker confirms, this server stops accepting and drains
    /// (``Server/drain(idleGrace:deadline:)``); `drained` runs after its last connection closed.
    /// `continuing` is this process's own receipt when it took over from `path`: the offer then
    /// goes on on the socket that came with it (see ``ListenerHandOver/Offer``).
    public func offerHandOver(
        at path: String, continuing receipt: ListenerHandOver.Receipt? = nil, steering: SteeringGroup?,
        idleGrace: Duration = .milliseconds(500), drainDeadline: Duration, drained: @escaping @Sendable () -> Void = {}
    ) throws(HandOverError) -> ListenerHandOver.Offer {
        let listeners = listenerDescriptors
        return try ListenerHandOver.Offer(
            path: path, continuing: receipt,
            package: {
                guard let steering, let (extras, note) = try? steering.handOverPackage() else {
                    return ListenerHandOver.Package(listeners: listeners)
                }
                return ListenerHandOver.Package(listeners: listeners, extras: OwnedDescriptors(taking: extras), note: note)
            },
            stopAccepting: retiring(idleGrace: idleGrace, drainDeadline: drainDeadline, drained: drained))
    }
}

extension SteeringGroup {
    /// The steering group that came with a hand-over from ``Server/offerHandOver(at:continuing:steering:idleGrace:drainDeadline:drained:)``,
    /// or nil when the old server had none (the kernel's hash). Takes the receipt's extras: the
    /// group owns them from here on (and closes them if they are not a steering group's).
    public static func takeOver(from receipt: ListenerHandOver.Receipt) throws -> SteeringGroup? {
        let extras = receipt.takeExtras()
        guard !extras.isEmpty || receipt.note.hasPrefix("strait-steer") else { return nil }
        return try SteeringGroup(adopting: extras.takeAll(), note: receipt.note, attachedThrough: receipt.listenerDescriptors.first)
    }
}
