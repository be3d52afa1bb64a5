import Foundation
import StraitAgent
import StraitBPF
import StraitLB
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The agent's `lb:` section against the real kernel: the lab's cgroup is balanced, and the
/// service and its backends live on the loopback of the lab's receiver namespace
/// (198.19.S.10 the service, .11 and .12 the backends), so no byte leaves the namespace.
@Suite("agent: the lb section", .serialized, kernelGate)
struct AgentLBTests {
    /// A backend: a listener on `address` in the lab's receiver namespace (outside the cgroup).
    final class Backend: @unchecked Sendable {
        let fd: CInt
        let address: String
        let port: UInt16

        init(_ lab: AgentLab, address: String) throws {
            let fd = try boundSocket(in: lab.receiver, type: Int32(SOCK_STREAM.rawValue), ip: address)
            do { try systemCall("listen") { listen(fd, 64) } } catch {
                close(fd)
                throw error
            }
            self.fd = fd
            self.address = address
            port = localPort(fd)
        }

        deinit { close(fd) }

        var endpoint: String { "\(address):\(port)" }

        /// Accepts one connection within two seconds; nil when none came.
        func accept() -> TestSocket? {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 2000) == 1 else { return nil }
            let accepted = Glibc.accept(fd, nil, nil)
            return accepted >= 0 ? TestSocket(fd: accepted) : nil
        }
    }

    static func service(_ lab: AgentLab) -> String { "198.19.\(lab.subnet).10" }

    /// Puts the service and backend addresses on the receiver namespace's loopback.
    static func addAddresses(_ lab: AgentLab) throws {
        try NetworkNamespace.runIP(["-n", lab.receiver.name, "link", "set", "lo", "up"])
        for host in [10, 11, 12] {
            try NetworkNamespace.runIP(["-n", lab.receiver.name, "addr", "add", "198.19.\(lab.subnet).\(host)/32", "dev", "lo"])
        }
    }

    static func yaml(_ lab: AgentLab, backends: [Backend]) -> String {
        """
        metrics: 127.0.0.1:0
        lb:
          cgroup: \(lab.cgroup.cgroup.path)
          services:
            - name: web
              address: \(service(lab)):8080
              backends: [\(backends.map(\.endpoint).joined(separator: ", "))]

        """
    }

    /// A client socket of the cgroup in the receiver namespace, connected to the service; then one
    /// request and its echo, byte for byte, through whichever backend accepted. Returns the
    /// client, the index of the backend that accepted, and what getpeername() showed.
    static func connectAndEcho(_ lab: AgentLab, _ backends: [Backend], payload: [UInt8]) throws -> (client: TestSocket, backend: Int, server: TestSocket, peer: String) {
        let client = try lab.cgroup.inside {
            try lab.receiver.run { TestSocket(fd: try systemCall("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }) }
        }
        var (storage, length) = socketAddress(service(lab), 8080)
        _ = try withUnsafePointer(to: &storage) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                try systemCall("connect to the service") { connect(client.fd, address, length) }
            }
        }
        client.setReceiveTimeout(seconds: 5)
        let peer = socketEndpoint(client.fd, peer: true)
        var accepted: (Int, TestSocket)?
        for (index, backend) in backends.enumerated() {
            var entry = pollfd(fd: backend.fd, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, 0) == 1, let server = backend.accept() {
                accepted = (index, server)
                break
            }
        }
        if accepted == nil {
            // The handshake may still be completing: wait on the first backend with a connection.
            let deadline = Date().addingTimeInterval(2)
            while accepted == nil && Date() < deadline {
                for (index, backend) in backends.enumerated() {
                    var entry = pollfd(fd: backend.fd, events: Int16(POLLIN), revents: 0)
                    if poll(&entry, 1, 20) == 1, let server = backend.accept() { accepted = (index, server) }
                }
            }
        }
        guard let (index, server) = accepted else { throw TestFailure("no backend accepted the connection within 2 s") }
        server.setReceiveTimeout(seconds: 5)
        try client.sendAll(payload)
        let request = try server.receive(exactly: payload.count)
        try server.sendAll(request.reversed())
        let reply = try client.receive(exactly: payload.count)
        #expect(request == payload, "the backend received the request byte for byte")
        #expect(reply == Array(payload.reversed()), "the client received the backend's answer byte for byte")
        return (client, index, server, "\(peer.address):\(peer.port)")
    }

    @Test("connects of the cgroup reach the backend byte-exact; a reload moves new connects only; a restart adopts; cleanup removes it")
    func balanceReloadRestartCleanup() async throws {
        try await AgentLab.with { lab in
            try Self.addAddresses(lab)
            let first = try Backend(lab, address: "198.19.\(lab.subnet).11")
            let second = try Backend(lab, address: "198.19.\(lab.subnet).12")
            let backends = [first, second]
            try lab.write(Self.yaml(lab, backends: [first]))

            let agent = lab.agent()
            let outcome = try agent.start()
            #expect(outcome.changes.last == PartChange(part: "lb", action: .created, detail: "1 service(s) on \(lab.cgroup.cgroup.path)"), "\(outcome.changes)")
            #expect(outcome.differences.isEmpty, "\(outcome.differences)")
            let endpoint = try #require(agent.endpointAddress)
            #expect(try httpGet(endpoint, "/readyz").status == 200)
            #expect(AgentState.read(lab.paths.stateFile).lbCgroup == lab.cgroup.cgroup.path)

            let old = try Self.connectAndEcho(lab, backends, payload: Array("to the first backend".utf8))
            defer { old.client.close(); old.server.close() }
            #expect(old.backend == 0)
            #expect(old.peer == "\(Self.service(lab)):8080", "getpeername shows the service")
            let metrics = try httpGet(endpoint, "/metrics").body
            #expect((sample(metrics, "strait_lb_backend_connects_total{service=\"web\",backend=\"\(first.endpoint)\"}") ?? 0) >= 1, "\(metrics)")

            // A reload to the second backend: new connects go there; the open one stays with the first.
            try lab.write(Self.yaml(lab, backends: [second]))
            let reload = agent.reload()
            #expect(reload.changes.last == PartChange(part: "lb", action: .updated, detail: "1 service(s) changed"), "\(reload.changes)")
            #expect(reload.changes.dropLast().allSatisfy { $0.action == .unchanged })
            let moved = try Self.connectAndEcho(lab, backends, payload: Array("to the second backend".utf8))
            defer { moved.client.close(); moved.server.close() }
            #expect(moved.backend == 1)
            try old.client.sendAll(Array("still here".utf8))
            #expect(try old.server.receive(exactly: 10) == Array("still here".utf8), "the connection made before the reload still flows")

            // A file that does not check changes nothing.
            try lab.write(Self.yaml(lab, backends: [second]) + "    policy: roundrobin\n")
            #expect(agent.reload().rejected != nil)
            #expect(try Self.connectAndEcho(lab, backends, payload: [1, 2, 3]).backend == 1)
            try lab.write(Self.yaml(lab, backends: [second]))

            // An agent restart: the links stay balancing while no agent runs, and the next one adopts them.
            let linkID = try lab.linkID(lab.paths.lbDirectory + "/links/lb_connect4")
            await agent.stop()
            let between = try Self.connectAndEcho(lab, backends, payload: Array("no agent running".utf8))
            between.client.close(); between.server.close()
            #expect(between.backend == 1, "balanced by the pinned links while no agent runs")
            let next = lab.agent()
            let adopted = try next.start()
            #expect(adopted.changes.last == PartChange(part: "lb", action: .unchanged, detail: "adopted 1 service(s) on \(lab.cgroup.cgroup.path)"), "\(adopted.changes)")
            #expect(try lab.linkID(lab.paths.lbDirectory + "/links/lb_connect4") == linkID, "the same link, not a new one")
            #expect(adopted.differences.isEmpty, "\(adopted.differences)")
            #expect(try Self.connectAndEcho(lab, backends, payload: Array("adopted".utf8)).backend == 1)
            await next.stop()

            // Cleanup detaches it: a connect to the service address is no longer rewritten.
            let removed = try KernelReconciler(paths: lab.paths).cleanup(state: AgentState.read(lab.paths.stateFile))
            #expect(removed == ["lb (cgroup \(lab.cgroup.cgroup.path))"])
            #expect(!FileManager.default.fileExists(atPath: lab.paths.lbDirectory))
            let unbalanced = try lab.cgroup.inside {
                try lab.receiver.run { TestSocket(fd: try systemCall("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }) }
            }
            defer { unbalanced.close() }
            var (storage, length) = socketAddress(Self.service(lab), 8080)
            let result = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(unbalanced.fd, $0, length) } }
            #expect(result == -1 && errno == ECONNREFUSED, "nothing listens on the service address itself")
        }
    }

    @Test("removing the lb section detaches it; /readyz reports an lb that is not running")
    func sectionRemoved() async throws {
        try await AgentLab.with { lab in
            try Self.addAddresses(lab)
            let backend = try Backend(lab, address: "198.19.\(lab.subnet).11")
            try lab.write(Self.yaml(lab, backends: [backend]))
            let agent = lab.agent()
            try agent.start()
            defer { Task { await agent.stop() } }
            #expect(lab.paths.lbPersistence.exists)

            try lab.write("metrics: 127.0.0.1:0\n")
            let outcome = agent.reload()
            #expect(outcome.changes.last?.action == .removed, "\(outcome.changes)")
            #expect(!lab.paths.lbPersistence.exists)
            #expect(AgentState.read(lab.paths.stateFile).lbCgroup == nil)
            let query = try bpftool(["cgroup", "show", lab.cgroup.cgroup.path])
            #expect(!query.contains("connect4"), "\(query)")

            // An lb on a cgroup that does not exist fails to apply: the agent runs, not ready, and says why.
            try lab.write(Self.yaml(lab, backends: [backend]).replacingOccurrences(of: lab.cgroup.cgroup.path, with: lab.cgroup.cgroup.path + "-missing"))
            let failed = agent.reload()
            #expect(failed.changes.last?.action == .failed, "\(failed.changes)")
            let ready = try httpGet(try #require(agent.endpointAddress), "/readyz")
            #expect(ready.status == 503 && ready.body.contains("lb: not running"), "\(ready)")
            await agent.stop()
        }
    }
}
