import Atomics
import Foundation
import StraitBench
import StraitNet
import StraitSteer
import StraitSystem
import StraitTestSupport
import Testing

/// A private folder for hand-over control sockets, removed afterwards.
func withControlDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = "/tmp/" + uniqueTestName("strait-test-sstr")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

@Suite("StraitSteer: restarts that lose no connection", kernelGate, .serialized)
struct RestartTests {
    @Test("hand-over: the new server gets the same sockets and serves new clients; the old one closes its idle connection cleanly")
    func handOverKeepsSockets() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let echo = ConnectionHandlers(onRequest: { connection in
                    connection.writer.append(connection.reader)
                    connection.flush()
                })
                let oldGroup = try EventLoopGroup(loopCount: 2), newGroup = try EventLoopGroup(loopCount: 2)
                defer { oldGroup.shutdown(); newGroup.shutdown() }
                let old = try namespace.run { try Server.reusePortGroup(address: .loopback(), group: oldGroup, steering: nil, handlers: echo) }
                let port = old.address.port!
                let cookies = try old.listenerDescriptors.map(SocketCall.cookie)
                // A connection open on the old server before the restart, served by it.
                let early = TestSocket(fd: try namespace.run { try RawSocket.connect(port: port) })
                early.setReceiveTimeout(seconds: 3)
                try early.sendAll(Array("early".utf8))
                #expect(try early.receive(exactly: 5) == Array("early".utf8))

                let drained = ManagedAtomic<Bool>(false)
                let offer = try old.offerHandOver(at: directory + "/control.sock", idleGrace: .milliseconds(200), drainDeadline: .seconds(2), drained: { drained.store(true, ordering: .relaxed) })
                defer { offer.close() }
                let receipt = try ListenerHandOver.take(from: offer.path)
                #expect(try receipt.listenerDescriptors.map(SocketCall.cookie) == cookies, "the very same sockets")
                let new = try Server(listeners: receipt.adoptListeners(), group: newGroup, handlers: echo)
                try receipt.confirm()
                #expect(old.connectionCount == 1, "the early connection stays with the old server while it drains")
                let reply = try namespace.run { () -> [UInt8] in
                    let client = TestSocket(fd: try RawSocket.connect(port: port))
                    try client.sendAll(Array("after".utf8))
                    return try client.receive(exactly: 5)
                }
                #expect(reply == Array("after".utf8))
                // Draining, the old server closes the idle early connection cleanly (FIN, not reset).
                #expect(try early.receiveToEnd().isEmpty)
                await new.shutdown(gracePeriod: .seconds(2))
                for _ in 0..<200 where !drained.load(ordering: .relaxed) { try await Task.sleep(for: .milliseconds(10)) }
                let oldDrained = drained.load(ordering: .relaxed)
                #expect(oldDrained, "the old server drained after the hand-over")
            }
        }
    }

    @Test("Strait's restart under load: 10 restarts at 2,000 connections/s on a busy server, zero failed connections")
    func straitRestartUnderLoad() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let result = try await RestartDrill.run(mode: .strait, restarts: 10, connectionsPerSecond: 2000, workMicroseconds: 600, namespace: namespace, controlDirectory: directory)
                #expect(result.attempted > 200, "load ran through the restarts (the client falls behind its pace on a busy machine): \(result)")
                #expect(result.failedConnects == 0, "\(result)")
                #expect(result.resets == 0, "\(result)")
                #expect(result.succeeded == result.attempted)
            }
        }
    }

    @Test("bind anew and migrate, 10 restarts on a busy server: the old listeners' queues move to the new ones; zero failed connections")
    func bindAndMigrateUnderLoad() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let result = try await RestartDrill.run(mode: .bindAndMigrate, restarts: 10, connectionsPerSecond: 2000, workMicroseconds: 600, namespace: namespace, controlDirectory: directory)
                #expect(result.attempted > 200, "load ran through the restarts (the client falls behind its pace on a busy machine): \(result)")
                #expect(result.failedConnects == 0 && result.resets == 0, "\(result)")
            }
        }
    }

    @Test("the steering group travels with the listeners: the new owner sees the same members and can change them")
    func steeringGroupHandOver() async throws {
        try await withControlDirectory { directory in
            try await TestNamespace.with { namespace in
                let echo = ConnectionHandlers(onRequest: { connection in
                    connection.writer.append(connection.reader)
                    connection.flush()
                })
                let oldGroup = try EventLoopGroup(loopCount: 2), newGroup = try EventLoopGroup(loopCount: 2)
                defer { oldGroup.shutdown(); newGroup.shutdown() }
                let oldSteering = try SteeringGroup(policy: .activeBackup)
                let old = try namespace.run { try Server.reusePortGroup(address: .loopback(), group: oldGroup, steering: oldSteering, handlers: echo) }
                let offer = try old.offerHandOver(at: directory + "/control.sock", steering: oldSteering, idleGrace: .milliseconds(50), drainDeadline: .seconds(1))
                defer { offer.close() }
                let receipt = try ListenerHandOver.take(from: offer.path)
                let newSteering = try #require(try SteeringGroup.takeOver(from: receipt))
                defer { newSteering.close() }
                #expect(newSteering.members == oldSteering.members)
                #expect(newSteering.policy == .activeBackup && newSteering.migrates)
                let listeners = try receipt.adoptListeners()
                let new = try Server(listeners: listeners, group: newGroup, handlers: echo)
                try receipt.confirm()
                oldSteering.close()  // the old owner's close must not detach: its socket copies are closed
                // The primary leaves under the new owner; the backup takes every connection.
                try newSteering.memberLeaving(listeners[0].fd)
                let before = try newSteering.counters().selected
                try namespace.run {
                    for _ in 0..<10 {
                        let client = TestSocket(fd: try RawSocket.connect(port: new.address.port!))
                        try client.sendAll(Array("hello".utf8))
                        #expect(try client.receive(exactly: 5) == Array("hello".utf8))
                    }
                }
                #expect(try newSteering.counters().selected == before + 10, "the adopted program and maps still steer")
                await new.shutdown(gracePeriod: .seconds(2))
            }
        }
    }
}
