import Foundation
import StraitBench
import StraitNet
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The hand-over protocol's failure cases, and `strait steer serve` restarted across real processes.
@Suite("StraitNet: listener hand-over, failures and real processes", kernelGate, .serialized)
struct HandOverTests {
    static let echo = ConnectionHandlers(onRequest: { connection in
        connection.writer.append(connection.reader)
        connection.flush()
    })

    /// One echo round trip to 127.0.0.1:`port` of the calling thread's namespace.
    static func echoes(port: UInt16) throws -> Bool {
        let client = TestSocket(fd: try RawSocket.connect(port: port))
        client.setReceiveTimeout(seconds: 3)
        try client.sendAll(Array("hello".utf8))
        return try client.receive(exactly: 5) == Array("hello".utf8)
    }

    @Test("a taker that gives up before confirming changes nothing: the old server serves on, and the next taker gets the sockets")
    func failedTakerThenSuccess() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let oldGroup = try EventLoopGroup(loopCount: 2), newGroup = try EventLoopGroup(loopCount: 2)
                defer { oldGroup.shutdown(); newGroup.shutdown() }
                let old = try namespace.run { try Server.reusePortGroup(address: .loopback(), group: oldGroup, steering: nil, handlers: Self.echo) }
                let port = old.address.port!
                let offer = try old.offerHandOver(at: directory + "/control.sock", idleGrace: .milliseconds(50), drainDeadline: .seconds(1))
                defer { offer.close() }
                for _ in 0..<3 {
                    _ = try ListenerHandOver.take(from: offer.path)
                    // The receipt goes away unconfirmed: it closes its listeners and its control connection.
                }
                try await Task.sleep(for: .milliseconds(50))
                #expect(offer.outcome == nil, "still offering")
                #expect(try namespace.run { try Self.echoes(port: port) }, "the old server still accepts")
                let receipt = try ListenerHandOver.take(from: offer.path)
                let new = try Server(listeners: receipt.adoptListeners(), group: newGroup, handlers: Self.echo)
                try receipt.confirm()
                #expect(offer.handedOver)
                #expect(try namespace.run { try Self.echoes(port: port) }, "the new server accepts")
                await new.shutdown(gracePeriod: .seconds(1))
            }
        }
    }

    @Test("three generations at one path: the offer socket travels, the path never changes hands, `who` names the current owner")
    func offerSocketTravels() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let path = directory + "/control.sock"
                let groups = try (0..<3).map { _ in try EventLoopGroup(loopCount: 1) }
                defer { groups.forEach { $0.shutdown() } }
                var server = try namespace.run { try Server(address: .loopback(), group: groups[0], handlers: Self.echo) }
                let port = server.address.port!
                var offer = try server.offerHandOver(at: path, drainDeadline: .seconds(1))
                var info = stat()
                #expect(stat(path, &info) == 0)
                let inode = info.st_ino
                #expect(try ListenerHandOver.owner(of: path) == getpid())
                for generation in 1..<3 {
                    let receipt = try ListenerHandOver.take(from: path)
                    let next = try Server(listeners: receipt.adoptListeners(), group: groups[generation], handlers: Self.echo)
                    try receipt.confirm()
                    let nextOffer = try next.offerHandOver(at: path, continuing: receipt, drainDeadline: .seconds(1))
                    offer.close()  // the old offer's close leaves the path to its successor
                    #expect(stat(path, &info) == 0 && info.st_ino == inode, "the same socket file, generation \(generation)")
                    #expect(try ListenerHandOver.owner(of: path) == getpid(), "the successor answers at the path")
                    #expect(try namespace.run { try Self.echoes(port: port) })
                    server = next
                    offer = nextOffer
                }
                offer.close()
                #expect(stat(path, &info) != 0, "the last offer, cancelled, removes its path")
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }
    }

    @Test("a live offer at the path is refused with EADDRINUSE; a stale socket file is replaced; a silent one times out, not EAGAIN")
    func ownershipOfThePath() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let group = try EventLoopGroup(loopCount: 1)
                defer { group.shutdown() }
                let server = try namespace.run { try Server(address: .loopback(), group: group, handlers: Self.echo) }
                let path = directory + "/control.sock"
                let offer = try server.offerHandOver(at: path, drainDeadline: .seconds(1))
                do throws(HandOverError) {
                    _ = try server.offerHandOver(at: path, drainDeadline: .seconds(1))
                    Issue.record("a second offer at a live path was accepted")
                } catch {
                    #expect(error == .pathInUse(path: path, owner: getpid()) && "\(error)".contains("\(getpid())"), "\(error)")
                }
                #expect(offer.outcome == nil, "the live offer is untouched")

                // A socket file whose process is gone: bound, then closed without unlinking.
                let stale = directory + "/stale.sock"
                let dead = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue))
                try SocketCall.bind(dead, to: .unix(path: stale))
                closeDescriptor(dead)
                #expect(try ListenerHandOver.owner(of: stale) == nil)
                let replacement = try server.offerHandOver(at: stale, drainDeadline: .seconds(1))
                #expect(try ListenerHandOver.owner(of: stale) == getpid())
                replacement.close()

                // Something listens but never answers: the take gives up at its deadline.
                let silent = directory + "/silent.sock"
                let mute = try SocketCall.socket(domain: AF_UNIX, type: CInt(SOCK_SEQPACKET.rawValue))
                defer { closeDescriptor(mute) }
                try SocketCall.bind(mute, to: .unix(path: silent))
                try SocketCall.listen(mute, backlog: 4)
                let started = ContinuousClock.now
                do throws(HandOverError) {
                    _ = try ListenerHandOver.take(from: silent, timeout: .milliseconds(300))
                    Issue.record("a take from a silent socket returned")
                } catch {
                    #expect(error == .timedOut(path: silent, awaiting: "listeners from the process offering there", timeout: .milliseconds(300)), "\(error)")
                    #expect(ContinuousClock.now - started >= .milliseconds(300))
                }
                offer.close()
                await server.shutdown(gracePeriod: .seconds(1))
            }
        }
    }

    @Test("20 back-to-back restarts of real `strait steer serve` processes at 2,000 connections/s, after a drill churned the namespace: no failure, every old process exits")
    func realProcessesBackToBack() async throws {
        let binary = try #require(StraitProcesses.executable, "build the strait product first (make test does)")
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let churn = try await RestartDrill.run(mode: .closeAndBind, restarts: 5, connectionsPerSecond: 2000, namespace: namespace, controlDirectory: directory)
                #expect(churn.attempted > 100, "the drill churned the namespace: \(churn)")
                let result = try SteerBenchmark.restartAcrossProcesses(
                    strait: binary, restarts: 20, connectionsPerSecond: 2000, interval: .zero, namespace: namespace, controlDirectory: directory)
                #expect(result.attempted > 200, "load ran: \(result)")
                #expect(result.failedConnects == 0, "\(result)")
                #expect(result.resets == 0, "\(result)")
                #expect(result.succeeded == result.attempted, "\(result)")
            }
        }
    }
}
