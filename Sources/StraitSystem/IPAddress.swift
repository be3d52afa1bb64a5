#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address. IPv4 is kept in network byte order; ``ipv6Mapped`` gives the
/// 16-byte `::ffff:a.b.c.d` form the kernel programs use so that AF_INET and AF_INET6 sockets compare equal.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)  // network byte order
    case v6([UInt8])  // 16 bytes

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text; returns nil for anything else.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(v4.s_addr)
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self = .v6(withUnsafeBytes(of: &v6) { Array($0) })
            return
        }
        return nil
    }

    /// Whether this is an IPv4 address.
    public var isIPv4: Bool { if case .v4 = self { true } else { false } }

    /// Bytes in network order: 4 for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let raw): withUnsafeBytes(of: raw) { Array($0) }
        case .v6(let raw): raw
        }
    }

    /// The 16-byte IPv6 form; IPv4 becomes `::ffff:a.b.c.d`.
    public var ipv6Mapped: [UInt8] {
        switch self {
        case .v4: Array(repeating: 0, count: 10) + [0xff, 0xff] + bytes
        case .v6(let raw): raw
        }
    }

    /// Undoes ``ipv6Mapped`` for display: `::ffff:a.b.c.d` becomes IPv4 again.
    public init(ipv6Mapped raw: [UInt8]) {
        precondition(raw.count == 16)
        if raw[0..<10].allSatisfy({ $0 == 0 }) && raw[10] == 0xff && raw[11] == 0xff {
            self = .v4(raw[12..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        } else {
            self = .v6(raw)
        }
    }

    /// The address as `inet_ntop(3)` writes it (`198.18.0.1`, `2001:db8::1`); formats on a stack-sized buffer each call.
    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch self {
        case .v4(let raw):
            var address = in_addr(s_addr: raw)
            inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
        case .v6(let raw):
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: raw) }
            inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An address prefix such as `127.0.0.0/8` or `2001:db8::/32`.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    /// The network address, host bits cleared.
    public let address: IPAddress
    /// The prefix length in bits (0–32 for IPv4, 0–128 for IPv6).
    public let length: Int

    /// Parses `ADDRESS/LENGTH` (LENGTH in decimal digits), or a bare address as a host prefix
    /// (/32 or /128). `198.18.0.0/` is refused, not read as a host. Host bits are cleared
    /// (`1.2.3.4/24` is `1.2.3.0/24`): callers that must refuse them compare with ``address``.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let address = IPAddress(parts[0]) else { return nil }
        let maximum = address.isIPv4 ? 32 : 128
        if parts.count == 2 { guard !parts[1].isEmpty, parts[1].utf8.allSatisfy({ (0x30...0x39).contains($0) }), parts[1].count <= 3 else { return nil } }
        let length = parts.count == 2 ? Int(parts[1]) : maximum
        guard let length, (0...maximum).contains(length) else { return nil }
        self.init(address: address, length: length)
    }

    /// The prefix of `length` bits of `address`; host bits are cleared.
    public init(address: IPAddress, length: Int) {
        // Keep only the network bits so equal prefixes compare equal.
        var bytes = address.bytes
        for index in bytes.indices {
            let keep = max(0, min(8, length - index * 8))
            bytes[index] &= keep == 8 ? 0xff : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        self.address = address.isIPv4 ? .v4(bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }) : .v6(bytes)
        self.length = length
    }

    /// The prefix over the 16-byte mapped form (IPv4 /n becomes /96+n), as the kernel's LPM tries store it.
    public var ipv6MappedLength: Int { address.isIPv4 ? 96 + length : length }

    /// `address/length`, as configuration files write it.
    public var description: String { "\(address)/\(length)" }
}
