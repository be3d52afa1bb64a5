import ArgumentParser
import Foundation
import StraitCLI
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
/// what `strait proxy restart` does (the same ``ListenerHandOver``), and the server
/// `strait bench steer` restarts across processes.
struct SteerServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Echo server on a steered SO_REUSEPORT group; start another with --take-over to restart it without losing a connection.",
        discussion: """
            Prints `ready ADDRESS pid PID` once it accepts and (with --handover) offers its sockets to a successor:
            from then on another `strait steer serve --take-over PATH --handover PATH` may replace it.
            """
    )

    @Option(help: "IPv4 or IPv6 address to listen on.") var address = "127.0.0.1"
    @Option(help: "TCP port (0: the kernel chooses; the `ready` line names it). Pick one outside net.ipv4.ip_local_port_range.")
    var port: UInt16 = 7400
    @Option(help: "kernel, consistent-hash[:client|:4-tuple], active-backup or active-active.") var policy = "consistent-hash:4-tuple"
    @Option(help: "Event loops, one listener each.") var loops = 2
    @Option(help: "Offer the listeners at this Unix socket path for the next process.") var handover: String?
    @Option(help: "Take the listeners (and steering) from the process offering at this path, then tell it to drain.") var takeOver: String?
    @Option(help: "Seconds the old process may drain once replaced.") var drainSeconds: Double = 10
    @Option(help: "Stop after this many seconds (0: until SIGINT/SIGTERM or replaced).") var duration: Double = 0
    @Flag(help: "Print the ready and stopped lines as JSON objects, one a line.") var json = false

    /// One line on standard output: `ready` once listening, then `stopped` or `replaced`.
    struct Event: Encodable {
        var event: String
        var address: String?
        var pid: Int32?
    }

    func validate() throws {
        guard (1...64).contains(loops) else { throw ValidationError("--loops: from 1 to 64 (got \(loops))") }
        try requireSeconds(drainSeconds, in: 0...86_400, option: "--drain-seconds")
        try requireSeconds(duration, in: 0...31_622_400, option: "--duration")
    }

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
        var receipt: ListenerHandOver.Receipt?
        if let takeOver {
            let taken = try ListenerHandOver.take(from: takeOver)
            steering = try SteeringGroup.takeOver(from: taken)
            group = try EventLoopGroup(loopCount: taken.listenerDescriptors.count)
            server = try Server(listeners: taken.adoptListeners(), group: group, handlers: echo)
            try taken.confirm()
            receipt = taken
        } else {
            steering = steeringPolicy == .kernel ? nil : try SteeringGroup(policy: steeringPolicy)
            group = try EventLoopGroup(loopCount: loops)
            do {
                server = try Server.reusePortGroup(address: listenAddress, group: group, steering: steering, handlers: echo)
            } catch let error as SystemCallError where error.errno == .addressInUse {
                throw CommandFailure("cannot listen on \(listenAddress): \(error) (\(Self.explainTaken(listenAddress)))")
            } catch let error as SystemCallError where error.function == "bind" {
                throw CommandFailure("cannot listen on \(listenAddress): \(error). \(error.bindAdvice ?? "")")
            }
        }
        let replaced = ManagedFlag()
        var offer: ListenerHandOver.Offer?
        if let handover {
            // Before `ready`: a successor started as soon as this process is ready finds the offer.
            offer = try server.offerHandOver(
                at: handover, continuing: receipt, steering: steering, drainDeadline: .milliseconds(Int64(drainSeconds * 1000)),
                drained: { replaced.raise() })
        }
        let ready = json ? try jsonLine(Event(event: "ready", address: "\(server.address)", pid: getpid())) : "ready \(server.address) pid \(getpid())"
        FileHandle.standardOutput.write(Data((ready + "\n").utf8))
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
        if json { return print(try jsonLine(Event(event: replaced.isRaised ? "replaced" : "stopped"))) }
        print(replaced.isRaised ? "replaced; drained" : "stopped; drained")
    }

    /// Why a bind can fail with `EADDRINUSE` although no server listens there: a client socket
    /// (any state, TIME_WAIT included) holding the port as its local port when the port lies in the
    /// ephemeral range.
    static func explainTaken(_ address: SocketAddress) -> String {
        guard let port = address.port, let range = try? NamespaceSysctl.ephemeralPorts(), range.contains(port) else {
            return "another socket holds this address (`ss -tanp` shows which)"
        }
        return "port \(port) lies in net.ipv4.ip_local_port_range (\(range.lowerBound)-\(range.upperBound)), so an outgoing connection's socket may hold it (`ss -tanp` shows which): pick a port outside the range, or reserve it in net.ipv4.ip_local_reserved_ports"
    }
}

/// A flag one thread raises and another polls.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func raise() { lock.withLock { value = true } }
    var isRaised: Bool { lock.withLock { value } }
}
