import Foundation
import StraitSystem
import StraitTestSupport
import Testing

/// The socket systemd would listen on: a Unix datagram socket the test binds (at a path, or an
/// abstract name), read with a timeout.
final class NotifySocket: @unchecked Sendable {
    let fd: CInt
    /// What `NOTIFY_SOCKET` is set to: the path, or `@name` for an abstract socket.
    let address: String
    private let path: String?

    init(abstract: Bool = false) throws {
        let name = uniqueTestName("strait-notify")
        path = abstract ? nil : FileManager.default.temporaryDirectory.appendingPathComponent(name + ".sock").path
        address = path ?? "@" + name
        fd = try systemCall("socket") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var local = sockaddr_un()
        local.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &local.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        try withUnsafePointer(to: &local) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = try systemCall("bind notify socket") { bind(fd, raw, length) }
            }
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        closeDescriptor(fd)
        if let path { unlink(path) }
    }

    /// The next datagram, or nil after 10 s without one.
    func next() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count < 0 ? nil : String(decoding: buffer.prefix(count), as: UTF8.self)
    }

    /// Datagrams until one contains `assignment` (at most `limit`); all of them, in order.
    func until(_ assignment: String, limit: Int = 20) -> [String] {
        var seen: [String] = []
        while seen.count < limit, let message = next() {
            seen.append(message)
            if message.split(separator: "\n").contains(where: { $0 == assignment || $0.hasPrefix(assignment) }) { break }
        }
        return seen
    }
}

@Suite("sd_notify", .serialized)
struct ServiceNotifierTests {
    @Test("states arrive as one datagram at a path socket and at an abstract one", arguments: [false, true])
    func datagrams(abstract: Bool) throws {
        let socket = try NotifySocket(abstract: abstract)
        let notifier = ServiceNotifier(environment: ["NOTIFY_SOCKET": socket.address])
        #expect(notifier.isEnabled)
        try notifier.send(.ready, .status("serving\ntwo lines"))
        #expect(socket.next() == "READY=1\nSTATUS=serving two lines\n")
        try notifier.send(.reloading)
        let reloading = try #require(socket.next()).split(separator: "\n")
        #expect(reloading.first == "RELOADING=1")
        #expect(reloading.count == 2 && reloading[1].hasPrefix("MONOTONIC_USEC=") && UInt64(reloading[1].dropFirst("MONOTONIC_USEC=".count)) != nil)
        try notifier.send(.mainProcess(4242), .stopping)
        #expect(socket.next() == "MAINPID=4242\nSTOPPING=1\n")
    }

    @Test("without NOTIFY_SOCKET nothing is sent")
    func unsupervised() throws {
        let notifier = ServiceNotifier(environment: [:])
        #expect(!notifier.isEnabled)
        try notifier.send(.ready)  // a no-op, not an error
    }

    @Test("strait agent: READY=1 once serving, RELOADING=1 then READY=1 on SIGHUP and on a file change (new listeners accept), STOPPING=1 on SIGTERM")
    func agentProcess() throws {
        let binary = try #require(BuiltProducts.executable("strait"), "build the strait product first (make test does)")
        let socket = try NotifySocket()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-agent-notify")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let upstream = try TestListener(.ipv4)
        let first = try TestListener(.ipv4).port, second = try TestListener(.ipv4).port, third = try TestListener(.ipv4).port  // bound and released: free
        func file(_ ports: [UInt16]) -> String {
            """
            metrics: 127.0.0.1:0
            proxy:
              listeners: [\(ports.enumerated().map { "{ name: l\($0.offset), bind: 127.0.0.1:\($0.element), cluster: c, datapath: copy }" }.joined(separator: ", "))]
              clusters: [{ name: c, upstreams: [127.0.0.1:\(upstream.port)] }]
              drain_timeout: 1s

            """
        }
        let config = folder + "/strait.yaml"
        try file([first]).write(toFile: config, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["agent", "--config", config, "--pin-root", folder + "/no-pins",  // no accel or drop section: nothing is pinned
                              "--state-file", folder + "/state.json", "--watch-interval", "0.2", "--log-level", "error"]
        process.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": socket.address]) { $1 }
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        #expect(socket.until("READY=1").last?.contains("READY=1") == true)
        try file([first, second]).write(toFile: config, atomically: true, encoding: .utf8)
        kill(process.processIdentifier, SIGHUP)
        let reload = socket.until("READY=1")
        #expect(reload.first?.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") == true, "\(reload)")
        #expect(reload.last?.contains("READY=1") == true, "\(reload)")
        try connectLoopback(port: second).close()

        // No signal: the watcher sees the new bytes (as when Kubernetes updates a mounted ConfigMap).
        try file([first, second, third]).write(toFile: config, atomically: true, encoding: .utf8)
        let watched = socket.until("READY=1")
        #expect(watched.first?.hasPrefix("RELOADING=1") == true && watched.last?.contains("READY=1") == true, "\(watched)")
        try connectLoopback(port: third).close()

        process.terminate()
        #expect(socket.until("STOPPING=1").last?.contains("STOPPING=1") == true)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    @Test("strait proxy: READY=1, reload, and on `strait proxy restart` MAINPID= of the successor, which is READY")
    func proxyRestart() throws {
        let binary = try #require(BuiltProducts.executable("strait"), "build the strait product first (make test does)")
        let socket = try NotifySocket()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-proxy-notify")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let upstream = try TestListener(.ipv4)
        let port = try TestListener(.ipv4).port
        let config = folder + "/proxy.yaml", pidFile = folder + "/proxy.pid"
        try """
            listeners: [{ name: l, bind: 127.0.0.1:\(port), cluster: c, datapath: copy }]
            clusters: [{ name: c, upstreams: [127.0.0.1:\(upstream.port)] }]
            drain_timeout: 1s
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["proxy", "--config", config, "--pid-file", pidFile, "--handover-socket", folder + "/handover.sock", "--log-level", "error"]
        process.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": socket.address]) { $1 }
        try process.run()
        // Whichever process holds the pid file at the end is stopped.
        defer {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            if process.isRunning { process.terminate() }
        }
        #expect(socket.until("READY=1").last?.contains("READY=1") == true)
        kill(process.processIdentifier, SIGHUP)
        let reload = socket.until("READY=1")
        #expect(reload.first?.hasPrefix("RELOADING=1") == true && reload.last?.contains("READY=1") == true, "\(reload)")

        let restart = Process()
        restart.executableURL = URL(fileURLWithPath: binary)
        restart.arguments = ["proxy", "restart", "--pid-file", pidFile, "--handover-socket", folder + "/handover.sock"]
        restart.standardOutput = FileHandle.nullDevice
        try restart.run()
        restart.waitUntilExit()
        #expect(restart.terminationStatus == 0)
        let successor = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(successor != process.processIdentifier)
        // From the successor (MAINPID=itself, READY=1) and from the old process (MAINPID=successor), in either order.
        var messages: [String] = []
        while messages.filter({ $0.contains("MAINPID=\(successor)") }).count < 2, let message = socket.next() { messages.append(message) }
        #expect(messages.filter { $0.contains("MAINPID=\(successor)") }.count == 2, "\(messages)")
        #expect(messages.contains { $0.contains("MAINPID=\(successor)") && $0.contains("READY=1") }, "\(messages)")
        #expect(!messages.contains { $0.contains("STOPPING=1") }, "the old process must not stop the unit")
        process.waitUntilExit()  // the old one drains and exits

        kill(successor, SIGTERM)
        #expect(socket.until("STOPPING=1").last?.contains("STOPPING=1") == true)
    }
}
