import ArgumentParser
import Foundation
import StraitNet
import StraitSteer
import StraitSystem

struct SteerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "steer",
        abstract: "SO_REUSEPORT steering with sk_reuseport programs, and restarts that lose no connection.",
        subcommands: [SteerServe.self]
    )
}

/// A TCP echo server on a steered SO_REUSEPORT group that restarts in place: the reference for
/// what `strait proxy restart` does, and the server `strait bench steer` restarts across processes.
struct SteerServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Echo server on a steered SO_REUSEPORT group; start another with --take-over to restart it without losing a connection."
    )

    @Option(help: "IPv4 or IPv6 address to listen on.") var address = "127.0.0.1"
    @Option(help: "TCP port.") var port: UInt16 = 44000
    @Option(help: "kernel, consistent-hash[:client|:4-tuple], active-backup or active-active.") var policy = "consistent-hash:4-tuple"
    @Option(help: "Event loops, one listener each.") var loops = 2
    @Option(help: "Offer the listeners at this Unix socket path for the next process.") var handover: String?
    @Option(help: "Take the listeners (and steering) from the process offering at this path, then tell it to drain.") var takeOver: String?
    @Option(help: "Seconds the old process may drain once replaced.") var drainSeconds: Double = 10
    @Option(help: "Stop after this many seconds (0: until SIGINT/SIGTERM or replaced).") var duration: Double = 0

    func run() throws {
        Strait.bootstrapLogging()
        try? ResourceLimits.raiseOpenFilesToHard()  // this command owns its process: one descriptor per connection
        guard let steeringPolicy = SteeringPolicy(parsing: policy), !{ if case .payload = steeringPolicy { true } else { false } }() else {
            throw ValidationError("--policy: kernel, consistent-hash[:client|:4-tuple], active-backup or active-active")
        }
        guard let listenAddress = SocketAddress(host: address, port: port) else { throw ValidationError("--address: an IPv4 or IPv6 address") }
        let echo = ConnectionHandlers(onRequest: { connection in
            connection.writer.append(connection.reader)
            connection.flush()
        })
        let server: Server, steering: SteeringGroup?, group: EventLoopGroup
        if let takeOver {
            let receipt = try ListenerHandOver.take(from: takeOver)
            steering = try SteeringGroup.takeOver(from: receipt)
            group = try EventLoopGroup(loopCount: receipt.listenerDescriptors.count)
            server = try Server(listeners: receipt.adoptListeners(), group: group, handlers: echo)
            try receipt.confirm()
        } else {
            steering = steeringPolicy == .kernel ? nil : try SteeringGroup(policy: steeringPolicy)
            group = try EventLoopGroup(loopCount: loops)
            server = try Server.reusePortGroup(address: listenAddress, group: group, steering: steering, handlers: echo)
        }
        let replaced = ManagedFlag()
        var offer: ListenerHandOver.Offer?
        if let handover {
            offer = try server.offerHandOver(
                at: handover, steering: steering, drainDeadline: .milliseconds(Int64(drainSeconds * 1000)), drained: { replaced.raise() })
        }
        FileHandle.standardOutput.write(Data("ready \(server.address) pid \(getpid())\n".utf8))
        let stop = SignalFlag.interrupt()
        let end = duration > 0 ? Date().addingTimeInterval(duration) : .distantFuture
        while !stop.isRaised && !replaced.isRaised && Date() < end { usleep(10_000) }
        offer?.close()
        if !replaced.isRaised {
            let done = DispatchSemaphore(value: 0)
            Task {
                await server.drain(deadline: .milliseconds(Int64(drainSeconds * 1000)))
                done.signal()
            }
            done.wait()  // the main thread, never a concurrency thread
        }
        steering?.close()
        group.shutdown()
        print(replaced.isRaised ? "replaced; drained" : "stopped; drained")
    }
}

/// A flag one thread raises and another polls.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func raise() { lock.withLock { value = true } }
    var isRaised: Bool { lock.withLock { value } }
}
