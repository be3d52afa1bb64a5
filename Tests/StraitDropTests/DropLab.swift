import Foundation
import StraitBPF
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// Two network namespaces joined by a veth pair, with strait drop loaded under a private pin folder
/// and attached to the receiving end. Addresses (198.18.S.0/24 and 2001:db8:S::/64, S per lab):
///
///     receiver  sdr…a  .1 / ::1   <— veth —>   sdr…b  .2 / ::2 (allowed), .3 / ::3 (blocked in tests)  sender
///
/// Everything (namespaces, interfaces, pins, XDP links) is removed at the end, even on failure.
final class DropLab: @unchecked Sendable {
    let receiver: NetworkNamespace
    let sender: NetworkNamespace
    let receiverInterface: String
    let senderInterface: String
    let subnet: Int
    let pinRoot: String
    let dropper: Dropper

    var receiverIPv4: String { "198.18.\(subnet).1" }
    var allowedIPv4: String { "198.18.\(subnet).2" }
    var blockedIPv4: String { "198.18.\(subnet).3" }
    var receiverIPv6: String { "2001:db8:\(subnet)::1" }
    var allowedIPv6: String { "2001:db8:\(subnet)::2" }
    var blockedIPv6: String { "2001:db8:\(subnet)::3" }

    private static let counter = NSLock()
    nonisolated(unsafe) private static var next = 0

    private init(mode: XDPMode, attach: Bool) throws {
        _ = LeftoverSweep.once
        let n = Self.counter.withLock { Self.next += 1; return Self.next }
        subnet = 100 + n
        let stem = "sdr\(getpid() % 100_000)n\(n)"
        receiverInterface = stem + "a"
        senderInterface = stem + "b"
        receiver = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        do {
            sender = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        } catch {
            receiver.delete()
            throw error
        }
        pinRoot = BPFFS.defaultMount + "/" + uniqueTestName()
        do {
            try NetworkNamespace.wireVethPair(receiver: receiver, sender: sender, receiverInterface: receiverInterface, senderInterface: senderInterface, subnet: subnet)
            try BPFFS.ensureMounted()
            try BPFFS.makeDirectory(pinRoot)
            dropper = try Dropper.open(pinDirectory: pinRoot + "/drop", create: true)
            if attach {
                let dropper = self.dropper, interface = receiverInterface
                try receiver.run { try dropper.attach(interface: interface, mode: mode) }
            }
        } catch {
            receiver.delete()
            sender.delete()
            try? Dropper.removeAll(pinDirectory: pinRoot + "/drop")
            try? BPFFS.removeTree(pinRoot)
            throw error
        }
    }

    /// The attachment `attach` makes on the receiver's interface (its namespace inode and index).
    func receiverAttachment(mode: XDPMode, live: Bool) throws -> Dropper.Attachment {
        let interface = receiverInterface
        let ifindex = try receiver.run { try NetworkInterface(named: interface).index }
        return Dropper.Attachment(interface: interface, mode: mode, netns: try receiver.inode(), ifindex: ifindex, live: live)
    }

    /// Runs `body` with a fresh lab; tears it down afterwards whatever happens.
    static func with<T>(mode: XDPMode = .native, attach: Bool = true, _ body: (DropLab) throws -> T) throws -> T {
        let lab = try DropLab(mode: mode, attach: attach)
        defer { lab.tearDown() }
        return try body(lab)
    }

    private func tearDown() {
        try? Dropper.removeAll(pinDirectory: pinRoot + "/drop")
        receiver.delete()
        sender.delete()
        try? BPFFS.removeTree(pinRoot)
    }

    /// The XDP program id on the receiving interface now (0: none).
    func attachedProgramID() throws -> UInt32 {
        let interface = receiverInterface
        return try receiver.run { try XDPAttachment.query(ifindex: NetworkInterface(named: interface).index).programID }
    }
}

// MARK: Sockets in the namespaces

/// A socket address for `ip` (IPv4 or IPv6 text) and `port`.
func socketAddress(_ ip: String, _ port: UInt16) -> (storage: sockaddr_storage, length: socklen_t) {
    var storage = sockaddr_storage()
    if ip.contains(":") {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        inet_pton(AF_INET6, ip, &address.sin6_addr)
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in6.self) }
        return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    inet_pton(AF_INET, ip, &address.sin_addr)
    withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in.self) }
    return (storage, socklen_t(MemoryLayout<sockaddr_in>.size))
}

/// The text address of a socket address.
func addressText(_ storage: sockaddr_storage) -> String {
    var copy = storage
    var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    if storage.ss_family == sa_family_t(AF_INET6) {
        withUnsafeBytes(of: &copy) { raw in
            var address = raw.load(as: sockaddr_in6.self).sin6_addr
            _ = inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
        }
    } else {
        withUnsafeBytes(of: &copy) { raw in
            var address = raw.load(as: sockaddr_in.self).sin_addr
            _ = inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
        }
    }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A socket bound to `ip:port`, made inside `namespace` (it stays in that namespace for life).
func boundSocket(in namespace: NetworkNamespace, type: Int32, ip: String, port: UInt16 = 0) throws -> CInt {
    try namespace.run {
        let fd = try systemCall("socket") { socket(ip.contains(":") ? AF_INET6 : AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        var (storage, length) = socketAddress(ip, port)
        do {
            try withUnsafePointer(to: &storage) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    _ = try systemCall("bind \(ip):\(port)") { bind(fd, address, length) }
                }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }
}

func localPort(_ fd: CInt) -> UInt16 {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) } }
    return withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
}

/// A UDP receiver: collects datagrams (4-byte sequence numbers) by source address.
final class UDPSink: @unchecked Sendable {
    let fd: CInt
    let port: UInt16
    private let lock = NSLock()
    private var received: [String: Set<UInt32>] = [:]

    init(in namespace: NetworkNamespace, ip: String) throws {
        fd = try boundSocket(in: namespace, type: Int32(SOCK_DGRAM.rawValue), ip: ip)
        var buffer: CInt = 8 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, socklen_t(MemoryLayout<CInt>.size))
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        port = localPort(fd)
    }

    deinit { close(fd) }

    /// Reads until nothing arrives for `quiet` seconds.
    func drain(quiet: Double = 0.3) {
        var lastArrival = Date()
        var buffer = [UInt8](repeating: 0, count: 2048)
        while Date().timeIntervalSince(lastArrival) < quiet {
            var source = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let count = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &source) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) } }
            }
            guard count >= 4 else { continue }
            let sequence = buffer.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            let from = addressText(source)
            lock.withLock { _ = received[from, default: []].insert(sequence) }
            lastArrival = Date()
        }
    }

    func sequences(from ip: String) -> Set<UInt32> {
        let canonical = IPAddress(ip)!.description
        return lock.withLock { received[canonical] ?? [] }
    }
}

/// A UDP sender bound to one source address in the sender namespace.
final class UDPSource: @unchecked Sendable {
    let fd: CInt
    let destination: (storage: sockaddr_storage, length: socklen_t)

    init(in namespace: NetworkNamespace, ip: String, to destinationIP: String, port: UInt16) throws {
        fd = try boundSocket(in: namespace, type: Int32(SOCK_DGRAM.rawValue), ip: ip)
        destination = socketAddress(destinationIP, port)
    }

    deinit { close(fd) }

    func send(_ sequence: UInt32) throws {
        var payload = sequence
        var target = destination.storage
        _ = try withUnsafePointer(to: &target) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                try systemCall("sendto") { sendto(fd, &payload, 4, 0, address, destination.length) }
            }
        }
    }
}

/// Whether a TCP connect from `sourceIP` (in `namespace`) to `ip:port` completes within `timeout` seconds.
func tcpConnects(in namespace: NetworkNamespace, from sourceIP: String, to ip: String, port: UInt16, timeout: Double = 1.0) throws -> Bool {
    let fd = try boundSocket(in: namespace, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), ip: sourceIP)
    defer { close(fd) }
    var (storage, length) = socketAddress(ip, port)
    let result = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) } }
    if result == 0 { return true }
    guard errno == EINPROGRESS else { return false }
    var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
    guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return false }
    var error: CInt = 0
    var errorLength = socklen_t(MemoryLayout<CInt>.size)
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &errorLength)
    return error == 0
}

/// A TCP listener in the receiver namespace that counts accepted connections.
final class TCPListener: @unchecked Sendable {
    let fd: CInt
    let port: UInt16

    init(in namespace: NetworkNamespace, ip: String) throws {
        let fd = try boundSocket(in: namespace, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), ip: ip)
        try systemCall("listen") { listen(fd, 64) }
        self.fd = fd
        port = localPort(fd)
    }

    deinit { close(fd) }

    /// Accepts everything queued now; returns the peers' addresses.
    func acceptAll() -> [String] {
        var peers: [String] = []
        while true {
            var source = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &source) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &length) } }
            if client < 0 { return peers }
            close(client)
            peers.append(addressText(source))
        }
    }
}
