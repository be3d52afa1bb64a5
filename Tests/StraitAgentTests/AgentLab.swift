import Foundation
import StraitAccel
import StraitAgent
import StraitBPF
import StraitDrop
import StraitNet
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// Everything an agent test needs, private to it: a cgroup v2 of its own (accel attaches there),
/// a pin root inside the test's bpffs folder, a state file and agent file in a temporary folder,
/// two network namespaces joined by a veth pair (drop attaches to the receiving end):
///
///     receiver  sag…a  198.18.S.1   <— veth —>   sag…b  .2 (allowed), .3 (blocked)  sender
///
/// and a listening upstream for the proxy section. Torn down at the end, pass or fail: pins,
/// links, namespaces, the cgroup and the folder.
final class AgentLab: @unchecked Sendable {
    let cgroup: TestCgroup
    let pair: VethPairLab
    let folder: String
    let upstream: TestListener

    var receiver: NetworkNamespace { pair.receiver }
    var sender: NetworkNamespace { pair.sender }
    var receiverInterface: String { pair.receiverInterface }
    var subnet: Int { pair.subnet }
    var paths: AgentPaths { AgentPaths(pinRoot: cgroup.pinDirectory + "/strait", stateFile: folder + "/run/agent-state.json") }
    var configPath: String { folder + "/strait.yaml" }
    var receiverIPv4: String { pair.receiverIPv4 }
    var allowedIPv4: String { pair.allowedIPv4 }
    var blockedIPv4: String { pair.blockedIPv4 }

    private init(cgroup: TestCgroup) throws {
        self.cgroup = cgroup
        folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-agent")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        upstream = try TestListener(.ipv4)
        do {
            pair = try VethPairLab(interfacePrefix: "sag", firstSubnet: 140)
        } catch {
            upstream.socket.close()
            try? FileManager.default.removeItem(atPath: folder)
            throw error
        }
    }

    /// Runs `body` with a fresh lab; tears it down afterwards whatever happens.
    static func with<T>(_ body: (AgentLab) async throws -> T) async throws -> T {
        try await TestCgroup.with { cgroup in
            let lab = try AgentLab(cgroup: cgroup)
            defer { lab.tearDown() }
            return try await body(lab)
        }
    }

    private func tearDown() {
        try? Dropper.removeAll(pinDirectory: paths.dropDirectory)
        try? Accelerator.disable(pinDirectory: paths.accelDirectory)
        try? paths.lbPersistence.remove()
        try? BPFFS.removeTree(paths.pinRoot)
        pair.delete()
        upstream.socket.close()
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// An agent file with all three parts: accel on the test cgroup, drop on the receiving veth
    /// (the blocked sender address plus `extraRules`), and a copy-datapath proxy to the upstream.
    func yaml(accelPorts: [UInt16] = [], extraRules: [String] = [], proxy: Bool = true) -> String {
        var text = """
            metrics: 127.0.0.1:0
            accel:
              cgroup: \(cgroup.cgroup.path)
              ports: [\(accelPorts.map(String.init).joined(separator: ", "))]
              mode: always
            drop:
              interfaces:
                - { name: \(receiverInterface), mode: native, netns: \(receiver.name) }
              rules: [\(([blockedIPv4 + "/32"] + extraRules).map { "\"\($0)\"" }.joined(separator: ", "))]

            """
        if proxy {
            text += """
                proxy:
                  listeners: [{ name: web, bind: 127.0.0.1:0, cluster: web, datapath: copy }]
                  clusters: [{ name: web, upstreams: [127.0.0.1:\(upstream.port)] }]
                  access_log: false
                  drain_timeout: 1s

                """
        }
        return text
    }

    func write(_ yaml: String) throws {
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// An agent on this lab's paths, serving on a port the kernel picks, not notifying anyone.
    func agent() -> Agent {
        Agent(options: Agent.Options(
            configPath: configPath, paths: paths, version: "test", notifier: ServiceNotifier(socketPath: nil),
            proxyThreads: 1, metricsAddress: .ip(IPAddress("127.0.0.1")!, port: 0)))
    }

    /// Sends `count` UDP datagrams from `source` (an address of the sender namespace) to the receiver.
    func sendDatagrams(from source: String, count: Int) throws {
        let (source, destination) = (source, receiverIPv4)
        try sender.run {
            let fd = try systemCall("socket") { socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
            defer { closeDescriptor(fd) }
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, source, &local.sin_addr)
            var remote = sockaddr_in()
            remote.sin_family = sa_family_t(AF_INET)
            remote.sin_port = UInt16(9).bigEndian  // discard: nothing listens, the drop counters are what counts
            inet_pton(AF_INET, destination, &remote.sin_addr)
            try withUnsafePointer(to: &local) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    _ = try systemCall("bind") { bind(fd, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            let payload = [UInt8](repeating: 0x5a, count: 64)
            for _ in 0..<count {
                try withUnsafePointer(to: &remote) { pointer in
                    try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                        _ = try systemCall("sendto") { sendto(fd, payload, payload.count, 0, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                    }
                }
            }
        }
    }

    /// The frames the rule `rule` has matched so far (nil: the rule is not in the active set).
    func ruleHits(_ rule: String) throws -> UInt64? {
        try Dropper.open(pinDirectory: paths.dropDirectory).stats().count(try DropRule(parsing: rule))?.packets
    }

    /// Waits (up to 3 s) until `rule` has matched at least `count` frames; returns the last count.
    func waitForRuleHits(_ rule: String, atLeast count: UInt64) throws -> UInt64 {
        let deadline = Date().addingTimeInterval(3)
        var hits: UInt64 = 0
        repeat {
            hits = try ruleHits(rule) ?? 0
            if hits >= count { return hits }
            usleep(20_000)
        } while Date() < deadline
        return hits
    }

    /// The XDP program id on the receiving interface (0: none).
    func xdpProgramID() throws -> UInt32 { try pair.receiverXDPProgramID() }

    /// The id of the link pinned at `path` (links are replaced only if this changes).
    func linkID(_ path: String) throws -> UInt32? {
        try BPFLink.open(pinned: path).info()?.id
    }

    var accelLinkPath: String { paths.accelDirectory + "/link_sockops" }
    /// The pinned XDP link on the receiver's interface (named `native_NETNS_IFINDEX_NAME` by Dropper).
    var dropLinkPath: String {
        let folder = paths.dropDirectory + "/links"
        let pins = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        let name = pins.first { $0.hasPrefix("native_") && $0.hasSuffix("_" + receiverInterface) } ?? "native_(none)_" + receiverInterface
        return folder + "/" + name
    }
}

/// GET `path` from `address` over plain HTTP/1.1; returns the status code and the body.
func httpGet(_ address: SocketAddress, _ path: String) throws -> (status: Int, body: String) {
    guard case .ip(_, let port) = address else { throw TestFailure("httpGet: \(address) is not an IP address; give it the agent's TCP endpoint") }
    let socket = try connectLoopback(port: port)
    defer { socket.close() }
    socket.setReceiveTimeout(seconds: 5)
    try socket.sendAll(Array("GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8))
    let response = String(decoding: try socket.receiveToEnd(), as: UTF8.self)
    let status = Int(response.split(separator: " ").dropFirst().first ?? "") ?? 0
    let body = response.range(of: "\r\n\r\n").map { String(response[$0.upperBound...]) } ?? ""
    return (status, body)
}

/// A TCP connection to 127.0.0.1:`port`.
func connectLoopback(port: UInt16) throws -> TestSocket {
    let fd = try systemCall("socket") { Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    let connection = TestSocket(fd: fd)
    var remote = sockaddr_in()
    remote.sin_family = sa_family_t(AF_INET)
    remote.sin_port = port.bigEndian
    remote.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    try withUnsafePointer(to: &remote) { pointer in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
            _ = try systemCall("connect") { connect(fd, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
    return connection
}

/// The value of the first sample of `text` whose line starts with `prefix` (name and labels).
func sample(_ text: String, _ prefix: String) -> Double? {
    text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.split(separator: " ").last ?? "") }
}
