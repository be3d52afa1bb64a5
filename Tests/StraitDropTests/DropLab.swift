import Foundation
import StraitBPF
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// A ``VethPairLab`` (receiver and sender namespaces, 198.18.S.0/24 and 2001:db8:S::/64) with
/// strait drop loaded under a private pin folder and attached to the receiving end:
///
///     receiver  sdr…a  .1 / ::1   <— veth —>   sdr…b  .2 / ::2 (allowed), .3 / ::3 (blocked in tests)  sender
///
/// Everything (namespaces, interfaces, pins, XDP links) is removed at the end, even on failure.
final class DropLab: @unchecked Sendable {
    let pair: VethPairLab
    let pinRoot: String
    let dropper: Dropper

    var receiver: NetworkNamespace { pair.receiver }
    var sender: NetworkNamespace { pair.sender }
    var receiverInterface: String { pair.receiverInterface }
    var senderInterface: String { pair.senderInterface }
    var receiverIPv4: String { pair.receiverIPv4 }
    var allowedIPv4: String { pair.allowedIPv4 }
    var blockedIPv4: String { pair.blockedIPv4 }
    var receiverIPv6: String { pair.receiverIPv6 }
    var allowedIPv6: String { pair.allowedIPv6 }
    var blockedIPv6: String { pair.blockedIPv6 }

    private init(mode: XDPMode, attach: Bool) throws {
        _ = LeftoverSweep.once
        pair = try VethPairLab(interfacePrefix: "sdr", firstSubnet: 100)
        pinRoot = BPFFS.defaultMount + "/" + uniqueTestName()
        do {
            try BPFFS.ensureMounted()
            try BPFFS.makeDirectory(pinRoot)
            dropper = try Dropper.open(pinDirectory: pinRoot + "/drop", create: true)
            if attach {
                let dropper = self.dropper, interface = pair.receiverInterface
                try pair.receiver.run { try dropper.attach(interface: interface, mode: mode) }
            }
        } catch {
            pair.delete()
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
        pair.delete()
        try? BPFFS.removeTree(pinRoot)
    }

    /// The XDP program id on the receiving interface now (0: none).
    func attachedProgramID() throws -> UInt32 { try pair.receiverXDPProgramID() }
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
