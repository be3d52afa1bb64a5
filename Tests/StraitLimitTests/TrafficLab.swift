import Foundation
import StraitLimit
import StraitSystem
import StraitTestSupport

/// A veth between two private namespaces, a private cgroup and pin folder: TCP flows from the
/// sender namespace (sockets made inside the cgroup) to sinks in the receiver namespace, and the
/// receive rate measured over a window. Everything is torn down even when the test fails.
final class TrafficLab: @unchecked Sendable {
    let pair: VethPair
    let fixture: TestCgroup
    var pins: String { fixture.pinDirectory + "/limit" }
    var cgroupID: UInt64 { (try? Limiter.cgroupID(path: fixture.cgroup.path)) ?? 0 }

    private init(pair: VethPair, fixture: TestCgroup) {
        self.pair = pair
        self.fixture = fixture
    }

    static func with(_ body: (TrafficLab) throws -> Void) throws {
        try TestCgroup.with { fixture in
            let pair = try VethPair.create(
                name: uniqueTestName("strait-ns"), interface: "slim\(getpid() % 10000)\(Int.random(in: 0..<100))", subnet: UInt8.random(in: 1...250))
            let lab = TrafficLab(pair: pair, fixture: fixture)
            defer {
                let pins = lab.pins
                try? pair.sender.run { try Limiter.removeAll(pinDirectory: pins) }
                pair.delete()
            }
            try body(lab)
        }
    }

    /// Whether this kernel has the fq qdisc (probed once, on the loopback of a namespace made for it):
    /// aggregate limits need it, and this lab's live aggregate tests run only where it exists.
    static let fairQueueAvailable: Bool = {
        guard let namespace = try? NetworkNamespace.create(uniqueTestName("strait-ns")) else { return false }
        defer { namespace.delete() }
        return (try? NetworkNamespace.runTool("/usr/sbin/tc", ["-n", namespace.name, "qdisc", "add", "dev", "lo", "root", "fq"])) != nil
    }()

    /// Runs `body` on a thread in the sender namespace (where the egress interface is).
    func inSender<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T { try pair.sender.run(body) }

    /// The root qdisc kind of the sender's interface, as `tc` reports it.
    func senderRootQdisc() throws -> String {
        let name = pair.senderInterface
        return try inSender { try NetworkNamespace.runTool("/usr/sbin/tc", ["qdisc", "show", "dev", name, "root"]) }
    }
}

/// A listener in the receiver namespace that drains every connection and counts the bytes.
final class Sink: @unchecked Sendable {
    let listener: CInt
    let port: UInt16
    private let lock = NSLock()
    private var received = 0
    private var stopped = false
    private let done = DispatchGroup()

    init(lab: TrafficLab, ipv6: Bool) throws {
        let address = ipv6 ? lab.pair.receiverIPv6 : lab.pair.receiverIPv4
        (listener, port) = try lab.pair.receiver.run { try Sockets.listen(address: address) }
        done.enter()
        Thread.detachNewThread { [self] in
            defer { done.leave() }
            while !isStopped {
                let fd = accept(listener, nil, nil)
                if fd < 0 { continue }  // SO_RCVTIMEO: look at the stop flag again
                done.enter()
                Thread.detachNewThread { [self] in
                    defer { Glibc.close(fd); done.leave() }
                    var buffer = [UInt8](repeating: 0, count: 1 << 16)
                    while !isStopped {
                        let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        if got == 0 { return }
                        if got > 0 { lock.withLock { received += got } }
                    }
                }
            }
        }
    }

    var isStopped: Bool { lock.withLock { stopped } }
    var bytes: Int { lock.withLock { received } }

    /// Bits per second received over `seconds`, after `warmUp` seconds.
    func rate(warmUp: Double = 0.5, seconds: Double) -> Double {
        Thread.sleep(forTimeInterval: warmUp)
        let (start, before) = (Date(), bytes)
        Thread.sleep(forTimeInterval: seconds)
        return Double(bytes - before) * 8 / Date().timeIntervalSince(start)
    }

    func stop() {
        lock.withLock { stopped = true }
        done.wait()
        Glibc.close(listener)
    }
}

/// Connections from the sender namespace, made inside the lab's cgroup, each sending as fast as
/// it may on its own thread until stopped.
final class Flood: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private let done = DispatchGroup()

    init(lab: TrafficLab, to sink: Sink, ipv6: Bool, connections: Int) throws {
        let address = ipv6 ? lab.pair.receiverIPv6 : lab.pair.receiverIPv4
        let port = sink.port
        let fds = try lab.fixture.inside { try lab.inSender { try (0..<connections).map { _ in try Sockets.connect(address: address, port: port) } } }
        for fd in fds {
            done.enter()
            Thread.detachNewThread { [self] in
                defer { Glibc.close(fd); done.leave() }
                let chunk = [UInt8](repeating: 0x5a, count: 1 << 16)
                while !lock.withLock({ stopped }) {
                    let sent = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if sent < 0 && errno != EAGAIN && errno != EINTR { return }
                }
            }
        }
    }

    func stop() {
        lock.withLock { stopped = true }
        done.wait()
    }
}

/// Plain blocking sockets with one-second timeouts, so no loop waits forever.
enum Sockets {
    static func address(_ text: String, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> CInt) -> CInt {
        if text.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            inet_pton(AF_INET6, text, &address.sin6_addr)
            return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, text, &address.sin_addr)
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    static func timeouts(_ fd: CInt) {
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    static func listen(address text: String) throws -> (CInt, UInt16) {
        let fd = try systemCall("socket") { socket(text.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        timeouts(fd)
        try systemCall("bind") { address(text, port: 0) { Glibc.bind(fd, $0, $1) } }
        try systemCall("listen") { Glibc.listen(fd, 64) }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let port = withUnsafeBytes(of: bound) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
        return (fd, port)
    }

    /// Connects within 10 s (the first IPv6 connect of a fresh veth waits for neighbour discovery).
    static func connect(address text: String, port: UInt16) throws -> CInt {
        let fd = try systemCall("socket") { socket(text.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        do { try systemCall("connect \(text) port \(port)") { address(text, port: port) { Glibc.connect(fd, $0, $1) } } } catch {
            Glibc.close(fd)
            throw error
        }
        timeouts(fd)
        return fd
    }
}
