import CLibBPF
import Foundation
import StraitBPF
import StraitSystem
import StraitTestSupport
import Testing

/// Loads the sk_reuseport fixtures; `migrate` keeps the migrate-aware variant, else the plain one.
func reuseportFixtures(migrate: Bool) throws -> (object: BPFObject, program: BPFProgram, targets: ReuseportSocketArray, choice: TypedMap<UInt32, UInt32>) {
    let spec = try BPFObjectSpec(embedded: .reuseport)
    try spec.setAutoload(!migrate, forProgram: "select_by_choice")
    try spec.setAutoload(migrate, forProgram: "migrate_by_choice")
    let object = try spec.load()
    let program = try object.program(migrate ? "migrate_by_choice" : "select_by_choice")
    return (object, program, try ReuseportSocketArray(object.map("targets")), try object.map("choice").typed(key: UInt32.self, value: UInt32.self))
}

@Suite("StraitBPF: sk_reuseport programs, socket arrays, group attachment", kernelGate)
struct ReuseportAttachmentTests {
    @Test("the program picks the listener in the chosen slot for every connection; detach restores the hash")
    func selectsChosenListener() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixtures = try reuseportFixtures(migrate: false)
                #expect(fixtures.program.type == BPF_PROG_TYPE_SK_REUSEPORT)
                let first = try RawSocket.reuseportListener(port: 0)
                let port = try RawSocket.port(of: first)
                let second = try RawSocket.reuseportListener(port: port)
                defer { closeDescriptor(first); closeDescriptor(second) }

                try fixtures.targets.setSocket(first, at: 0)
                try fixtures.targets.setSocket(second, at: 1)
                #expect(try fixtures.targets.socketCookie(at: 1) == SocketCall.cookie(second))
                #expect(try fixtures.targets.socketCookie(at: 2) == nil)
                let attachment = try fixtures.program.attach(reuseportGroupOf: first)
                #expect(!attachment.migrates)

                for (slot, listener, other) in [(UInt32(1), second, first), (0, first, second)] {
                    try fixtures.choice.update(0, slot)
                    let clients = try (0..<32).map { _ in try RawSocket.connect(port: port) }
                    let accepted = RawSocket.acceptQueued(listener)
                    let elsewhere = RawSocket.acceptQueued(other)
                    #expect(accepted.count == 32, "slot \(slot): all 32 connections on its listener")
                    #expect(elsewhere.isEmpty)
                    (clients + accepted + elsewhere).forEach(closeDescriptor)
                }
                #expect(try fixtures.choice.lookup(1) == 64)

                try attachment.close()
                let clients = try (0..<64).map { _ in try RawSocket.connect(port: port) }
                let onFirst = RawSocket.acceptQueued(first), onSecond = RawSocket.acceptQueued(second)
                #expect(onFirst.count + onSecond.count == 64)
                #expect(try fixtures.choice.lookup(1) == 64, "detached: the program no longer runs")
                (clients + onFirst + onSecond).forEach(closeDescriptor)
            }
        }
    }

    @Test("a closed socket leaves its slot by itself; an empty slot falls back to the kernel's hash")
    func closedSocketLeavesSlot() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixtures = try reuseportFixtures(migrate: false)
                let first = try RawSocket.reuseportListener(port: 0)
                let port = try RawSocket.port(of: first)
                let second = try RawSocket.reuseportListener(port: port)
                defer { closeDescriptor(first) }
                try fixtures.targets.setSocket(first, at: 0)
                try fixtures.targets.setSocket(second, at: 1)
                let attachment = try fixtures.program.attach(reuseportGroupOf: first)
                defer { try? attachment.close() }
                closeDescriptor(second)
                #expect(try fixtures.targets.socketCookie(at: 1) == nil)
                try fixtures.choice.update(0, 1)
                let clients = try (0..<16).map { _ in try RawSocket.connect(port: port) }
                let accepted = RawSocket.acceptQueued(first)
                #expect(accepted.count == 16, "no connection refused: the hash picked the live listener")
                (clients + accepted).forEach(closeDescriptor)
                #expect(try fixtures.targets.removeSocket(at: 0))
                #expect(try !fixtures.targets.removeSocket(at: 0))
            }
        }
    }

    @Test("a non-listening TCP socket is refused by the socket array, and a wrong program type by attach")
    func refusals() throws {
        try TestNamespace.with { namespace in
            try namespace.run {
                let fixtures = try reuseportFixtures(migrate: false)
                let unbound = try SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue))
                defer { closeDescriptor(unbound) }
                #expect(throws: BPFError.self) { try fixtures.targets.setSocket(unbound, at: 0) }
                let other = try BPFObjectSpec(embedded: .fixtures).load()
                let listener = try RawSocket.reuseportListener(port: 0)
                defer { closeDescriptor(listener) }
                #expect(throws: BPFError.self) { _ = try other.program("observe_sockops").attach(reuseportGroupOf: listener) }
            }
        }
    }

    @Test("with tcp_migrate_req, a migrate-aware program moves a closing listener's queue; without it, the queue is reset")
    func migratesQueuedConnections() throws {
        for migrate in [true, false] {
            try TestNamespace.with(migrateRequests: migrate) { namespace in
                try namespace.run {
                    let fixtures = try reuseportFixtures(migrate: migrate)
                    #expect(fixtures.program.expectedAttachType == (migrate ? BPF_SK_REUSEPORT_SELECT_OR_MIGRATE : BPF_SK_REUSEPORT_SELECT))
                    let closing = try RawSocket.reuseportListener(port: 0)
                    let port = try RawSocket.port(of: closing)
                    let staying = try RawSocket.reuseportListener(port: port)
                    defer { closeDescriptor(staying) }
                    try fixtures.targets.setSocket(closing, at: 0)
                    try fixtures.targets.setSocket(staying, at: 1)
                    let attachment = try fixtures.program.attach(reuseportGroupOf: staying)
                    #expect(attachment.migrates == migrate)
                    defer { try? attachment.close() }

                    try fixtures.choice.update(0, 0)
                    let clients = try (0..<20).map { _ in try RawSocket.connect(port: port) }
                    defer { clients.forEach(closeDescriptor) }
                    try fixtures.choice.update(0, 1)
                    closeDescriptor(closing)
                    let moved = RawSocket.acceptQueued(staying)
                    defer { moved.forEach(closeDescriptor) }
                    if migrate {
                        #expect(moved.count == 20, "every queued connection moved to the live listener")
                        #expect(try fixtures.choice.lookup(2) == 20, "the program chose each migration's target")
                    } else {
                        #expect(moved.isEmpty, "without migration the closing listener's queue is lost")
                    }
                }
            }
        }
    }
}
