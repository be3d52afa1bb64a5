import Foundation
import StraitLB
import StraitSystem
import StraitTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

/// A private cgroup and network namespace with a LoadBalancer attached to the cgroup. The
/// namespace's loopback carries the backend addresses (198.18.1.0/24, 2001:db8::1:0/112) and the
/// virtual addresses (198.18.0.10, 2001:db8::10), so nothing ever leaves it. All sockets are made
/// in the namespace; "inside" ones also in the cgroup. Everything is torn down even on failure.
final class LBLab: @unchecked Sendable {
    static let vip4 = IPAddress("198.18.0.10")!
    static let vip6 = IPAddress("2001:db8::10")!
    static func backend4(_ index: Int) -> IPAddress { IPAddress("198.18.1.\(index)")! }
    static func backend6(_ index: Int) -> IPAddress { IPAddress("2001:db8::1:\(index)")! }

    let cgroup: TestCgroup
    let namespace: NetworkNamespace
    let balancer: LoadBalancer
    private var descriptors: [CInt] = []
    private let lock = NSLock()

    private init(cgroup: TestCgroup, namespace: NetworkNamespace) throws {
        self.cgroup = cgroup
        self.namespace = namespace
        var addresses = [Self.vip4.description + "/32", Self.vip6.description + "/128"]
        for index in 1...4 { addresses += [Self.backend4(index).description + "/32", Self.backend6(index).description + "/128"] }
        for address in addresses {
            try NetworkNamespace.runIP(["-n", namespace.name, "addr", "add", address, "dev", "lo"] + (address.contains(":") ? ["nodad"] : []))
        }
        balancer = try LoadBalancer(cgroup: cgroup.cgroup, capacity: 64)
    }

    static func with(_ body: (LBLab) throws -> Void) throws {
        try TestCgroup.with { cgroup in
            let namespace = try NetworkNamespace.create(uniqueTestName("strait-lb"))
            defer { namespace.delete() }
            let lab = try LBLab(cgroup: cgroup, namespace: namespace)
            defer { lab.tearDown() }
            try body(lab)
        }
    }

    private func tearDown() {
        balancer.close()
        lock.withLock {
            for fd in descriptors { Glibc.close(fd) }
            descriptors = []
        }
    }

    private func own(_ fd: CInt) -> CInt {
        lock.withLock { descriptors.append(fd) }
        return fd
    }

    /// Closes a socket made here.
    func close(socket fd: CInt) {
        lock.withLock { descriptors.removeAll { $0 == fd } }
        Glibc.close(fd)
    }

    /// A socket in the namespace; with `inside`, also in the lab's cgroup (balanced).
    func socket(ipv6: Bool, udp: Bool = false, inside: Bool = true) throws -> CInt {
        let cgroup = self.cgroup
        let fd = try namespace.run { () throws -> CInt in
            let make = { () throws -> CInt in
                try systemCall("socket") { Glibc.socket(ipv6 ? AF_INET6 : AF_INET, Int32((udp ? SOCK_DGRAM : SOCK_STREAM).rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
            }
            return inside ? try cgroup.inside(make) : try TestCgroup.outside(make)
        }
        return own(fd)
    }

    /// A TCP listener (or bound UDP socket) on `address`, port chosen by the kernel.
    func listener(_ address: IPAddress, udp: Bool = false, port: UInt16 = 0) throws -> (fd: CInt, port: UInt16) {
        let fd = try socket(ipv6: !address.isIPv4, udp: udp, inside: false)
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        try withSockaddr(address, port) { pointer, length in try systemCall("bind") { bind(fd, pointer, length) } }
        if !udp { try systemCall("listen") { listen(fd, 4096) } }
        return (fd, Self.address(of: fd, peer: false).port)
    }

    /// connect(): 0 on success, else errno.
    func connect(_ fd: CInt, _ address: IPAddress, _ port: UInt16, mapped: Bool = false) -> Int32 {
        let target = mapped ? IPAddress.v6(address.ipv6Mapped) : address
        let result = try? withSockaddr(target, port) { pointer, length in Glibc.connect(fd, pointer, length) }
        return result == 0 ? 0 : errno
    }

    /// sendto(): 0 on success, else errno.
    func send(_ fd: CInt, _ bytes: [UInt8], to address: IPAddress, _ port: UInt16, mapped: Bool = false) -> Int32 {
        let target = mapped ? IPAddress.v6(address.ipv6Mapped) : address
        let sent = try? withSockaddr(target, port) { pointer, length in bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, pointer, length) } }
        return sent == bytes.count ? 0 : errno
    }

    /// Waits up to a second for one datagram; returns it and its source.
    func receive(_ fd: CInt) throws -> (bytes: [UInt8], from: IPAddress, port: UInt16)? {
        guard waitReadable([fd], milliseconds: 1000) == fd else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var buffer = [UInt8](repeating: 0, count: 2048)
        let count = try withUnsafeMutablePointer(to: &storage) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                try systemCall("recvfrom") { buffer.withUnsafeMutableBytes { recvfrom(fd, $0.baseAddress, $0.count, 0, raw, &length) } }
            }
        }
        let (address, port) = Self.decode(storage)
        return (Array(buffer[0..<count]), address, port)
    }

    /// Accepts on whichever of `listeners` has a connection within a second; returns that index.
    func acceptAny(_ listeners: [CInt]) -> Int? {
        guard let ready = waitReadable(listeners, milliseconds: 1000), let index = listeners.firstIndex(of: ready) else { return nil }
        let accepted = accept(ready, nil, nil)
        if accepted >= 0 { Glibc.close(accepted) }
        return accepted >= 0 ? index : nil
    }

    func waitReadable(_ fds: [CInt], milliseconds: Int32) -> CInt? {
        var entries = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&entries, nfds_t(entries.count), milliseconds) > 0 else { return nil }
        return entries.first { $0.revents & Int16(POLLIN) != 0 }?.fd
    }

    /// The socket's cookie (SO_COOKIE), which lb.bpf.c hashes.
    static func cookie(_ fd: CInt) -> UInt64 {
        var cookie: UInt64 = 0
        var length = socklen_t(8)
        getsockopt(fd, SOL_SOCKET, 57 /* SO_COOKIE */, &cookie, &length)
        return cookie
    }

    static func address(of fd: CInt, peer: Bool) -> (address: IPAddress, port: UInt16) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = peer ? getpeername(fd, raw, &length) : getsockname(fd, raw, &length)
            }
        }
        return decode(storage)
    }

    static func decode(_ storage: sockaddr_storage) -> (IPAddress, UInt16) {
        var storage = storage
        return withUnsafeBytes(of: &storage) { raw in
            if raw.load(as: sa_family_t.self) == sa_family_t(AF_INET) {
                let address = raw.load(as: sockaddr_in.self)
                return (.v4(address.sin_addr.s_addr), UInt16(bigEndian: address.sin_port))
            }
            let address = raw.load(as: sockaddr_in6.self)
            return (.v6(withUnsafeBytes(of: address.sin6_addr) { Array($0) }), UInt16(bigEndian: address.sin6_port))
        }
    }

    func withSockaddr<T>(_ address: IPAddress, _ port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) throws -> T {
        switch address {
        case .v4(let raw):
            var value = sockaddr_in()
            value.sin_family = sa_family_t(AF_INET)
            value.sin_port = port.bigEndian
            value.sin_addr.s_addr = raw
            return try withUnsafePointer(to: &value) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        case .v6(let raw):
            var value = sockaddr_in6()
            value.sin6_family = sa_family_t(AF_INET6)
            value.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &value.sin6_addr) { $0.copyBytes(from: raw) }
            return try withUnsafePointer(to: &value) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
    }

    /// A TCP service on `vip:port` over backends listening on `backends` (one listener each).
    func tcpService(name: String = "web", vip: IPAddress, port: UInt16 = 80, backends: [IPAddress], policy: LBPolicy = .maglev) throws -> (LBServiceConfig, [CInt]) {
        var listeners: [CInt] = []
        var configs: [LBBackendConfig] = []
        for address in backends {
            let (fd, backendPort) = try listener(address)
            listeners.append(fd)
            configs.append(LBBackendConfig(address: address, port: backendPort))
        }
        return (LBServiceConfig(name: name, address: vip, port: port, policy: policy, backends: configs), listeners)
    }
}
