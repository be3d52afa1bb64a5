import Foundation
import StraitBPF
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Two private network namespaces joined by a veth pair, addressed from 198.18.S.0/24 and
/// 2001:db8:S::/64 (S per lab, so labs of one run never share a subnet):
///
///     receiver  <stem>a  .1 / ::1   <— veth —>   <stem>b  .2 / ::2, .3 / ::3  sender
///
/// What drop's and the agent's tests stand on. The lab owns both namespaces (and with them the
/// interfaces): ``delete()`` removes them; the suites call it in their teardown, pass or fail.
public final class VethPairLab: @unchecked Sendable {
    /// The namespace with the receiving end (where XDP programs attach).
    public let receiver: NetworkNamespace
    /// The namespace that sends, from ``allowedIPv4`` and ``blockedIPv4`` (and their IPv6 twins).
    public let sender: NetworkNamespace
    /// `<stem>a`, in ``receiver``.
    public let receiverInterface: String
    /// `<stem>b`, in ``sender``.
    public let senderInterface: String
    /// S of 198.18.S.0/24.
    public let subnet: Int

    /// The receiver's address.
    public var receiverIPv4: String { "198.18.\(subnet).1" }
    /// The sender's first address (tests keep it allowed).
    public var allowedIPv4: String { "198.18.\(subnet).2" }
    /// The sender's second address (tests block it).
    public var blockedIPv4: String { "198.18.\(subnet).3" }
    /// The receiver's IPv6 address.
    public var receiverIPv6: String { "2001:db8:\(subnet)::1" }
    /// The sender's first IPv6 address.
    public var allowedIPv6: String { "2001:db8:\(subnet)::2" }
    /// The sender's second IPv6 address.
    public var blockedIPv6: String { "2001:db8:\(subnet)::3" }

    private static let counter = NSLock()
    nonisolated(unsafe) private static var next: [String: Int] = [:]

    /// Makes both namespaces and the pair. Interfaces are named `<prefix><pid>n<k>a|b` (k counts
    /// labs of this prefix in the process) and the subnet is `firstSubnet + k`; on failure whatever
    /// was made is removed before the error is thrown.
    public init(interfacePrefix prefix: String, firstSubnet: Int) throws {
        let n = Self.counter.withLock { () -> Int in
            let value = (Self.next[prefix] ?? 0) + 1
            Self.next[prefix] = value
            return value
        }
        subnet = firstSubnet + n
        let stem = "\(prefix)\(getpid() % 100_000)n\(n)"
        receiverInterface = stem + "a"
        senderInterface = stem + "b"
        receiver = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        do {
            sender = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        } catch {
            receiver.delete()
            throw error
        }
        do {
            try NetworkNamespace.wireVethPair(receiver: receiver, sender: sender, receiverInterface: receiverInterface, senderInterface: senderInterface, subnet: subnet)
        } catch {
            delete()
            throw error
        }
    }

    /// Removes both namespaces (the veth pair goes with them).
    public func delete() {
        receiver.delete()
        sender.delete()
    }

    /// The XDP program id on the receiving interface now (0: none).
    public func receiverXDPProgramID() throws -> UInt32 {
        let interface = receiverInterface
        return try receiver.run { try XDPAttachment.query(ifindex: NetworkInterface(named: interface).index).programID }
    }
}

// MARK: Sockets in namespaces

/// A socket address for `ip` (IPv4 or IPv6 text) and `port`.
public func socketAddress(_ ip: String, _ port: UInt16) -> (storage: sockaddr_storage, length: socklen_t) {
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
public func addressText(_ storage: sockaddr_storage) -> String {
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
/// The caller owns the descriptor.
public func boundSocket(in namespace: NetworkNamespace, type: Int32, ip: String, port: UInt16 = 0) throws -> CInt {
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

/// The local (or, with `peer`, the remote) address and port of a socket.
public func socketEndpoint(_ fd: CInt, peer: Bool = false) -> (address: String, port: UInt16) {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    withUnsafeMutablePointer(to: &storage) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length) }
    }
    let port = withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    return (addressText(storage), port)
}

/// The local port of a socket.
public func localPort(_ fd: CInt) -> UInt16 { socketEndpoint(fd).port }
