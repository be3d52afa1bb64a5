import StraitNet
import StraitSystem

/// The PROXY protocol, version 2 (HAProxy's `proxy-protocol.txt`, section 2.2): a binary header a
/// proxy sends first on its connection to a server, saying who the client really was. Pure Swift,
/// no I/O: ``encode()`` makes the bytes to send, ``decode(_:)`` reads them with strict length
/// checks, so a header from a balancer in front of Strait (`accept_proxy: v2`) can be trusted only
/// as far as it is well-formed.
///
/// ```
/// 0                12   13        14             16            16+length
/// | signature (12) | ver|cmd | fam|proto | length (BE) | addresses | TLVs … |
///                    0x2 0/1   1/2/3 1/2
/// ```
/// Addresses: IPv4 4+4+2+2 bytes, IPv6 16+16+2+2, Unix 108+108 (source first, ports big-endian).
/// TLVs: type (1), length (2, BE), value. A `PP2_TYPE_CRC32C` TLV is checked when present.
public struct ProxyHeaderV2: Sendable, Equatable {
    /// `PROXY`: relayed for a client (the addresses are the client's and the address it reached);
    /// `LOCAL`: the proxy's own connection (a health check), addresses to be ignored.
    public enum Command: UInt8, Sendable { case local = 0, proxy = 1 }

    /// The connection's endpoints as the original client saw them.
    public enum Addresses: Sendable, Equatable {
        /// `AF_UNSPEC`: unknown; the receiver uses the connection's own addresses.
        case unspecified
        /// TCP (or UDP, by ``transport``) over IPv4 or IPv6: source first.
        case ip(source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16)
        /// `AF_UNIX`: the two socket paths (at most 108 bytes each, NUL-padded on the wire).
        case unix(source: [UInt8], destination: [UInt8])
    }

    /// What the header says.
    public var command: Command
    /// `1` stream (TCP), `2` datagram, `0` unspecified.
    public var transport: UInt8
    /// Who the client was and the address it reached; the receiver ignores them under `LOCAL`.
    public var addresses: Addresses
    /// Type-length-value extensions (`PP2_TYPE_ALPN` 0x01, `PP2_TYPE_AUTHORITY` 0x02, …), in order.
    public var tlvs: [(type: UInt8, value: [UInt8])]

    /// The 12 bytes every v2 header starts with.
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The fixed part before the addresses: signature, version and command, family and
    /// transport, length.
    public static let fixedLength = 16
    /// The longest header decoded (the fixed part plus the largest length field). Strait sends
    /// at most 52 bytes (IPv6, no TLVs).
    public static let maximumLength = fixedLength + Int(UInt16.max)
    /// `PP2_TYPE_CRC32C`: a CRC-32C of the whole header with this TLV's value zeroed.
    public static let crc32cType: UInt8 = 0x03

    /// A header as given, `transport` 1 (TCP) unless told; ``tcp(client:destination:)`` builds the
    /// one a relay sends.
    public init(command: Command, transport: UInt8 = 1, addresses: Addresses, tlvs: [(type: UInt8, value: [UInt8])] = []) {
        self.command = command
        self.transport = transport
        self.addresses = addresses
        self.tlvs = tlvs
    }

    /// A `PROXY` header for a TCP connection from `client` to `destination` (the listener's
    /// address). When the families differ, both go as IPv6 (IPv4 as `::ffff:a.b.c.d`).
    public static func tcp(client: SocketAddress, destination: SocketAddress) -> ProxyHeaderV2 {
        guard case .ip(let source, let sourcePort) = client, case .ip(let target, let targetPort) = destination else {
            return ProxyHeaderV2(command: .proxy, transport: 1, addresses: .unspecified)
        }
        if source.isIPv4 == target.isIPv4 {
            return ProxyHeaderV2(command: .proxy, addresses: .ip(source: source, sourcePort: sourcePort, destination: target, destinationPort: targetPort))
        }
        return ProxyHeaderV2(
            command: .proxy,
            addresses: .ip(source: .v6(source.ipv6Mapped), sourcePort: sourcePort, destination: .v6(target.ipv6Mapped), destinationPort: targetPort))
    }

    /// Equal when command, transport, addresses and every TLV (type and value, in order) are;
    /// written out because an array of tuples is not `Equatable`.
    public static func == (a: ProxyHeaderV2, b: ProxyHeaderV2) -> Bool {
        a.command == b.command && a.transport == b.transport && a.addresses == b.addresses
            && a.tlvs.map(\.type) == b.tlvs.map(\.type) && a.tlvs.map(\.value) == b.tlvs.map(\.value)
    }

    /// The header's bytes. Allocates one array of its exact size.
    public func encode() -> [UInt8] {
        var body: [UInt8] = []
        let family: UInt8
        switch addresses {
        case .unspecified:
            family = 0
        case .ip(let source, let sourcePort, let destination, let destinationPort):
            // Both of one family (``tcp(client:destination:)`` maps mixed ones to IPv6).
            let v4 = source.isIPv4 && destination.isIPv4
            family = v4 ? 1 : 2
            body += v4 ? source.bytes : source.ipv6Mapped
            body += v4 ? destination.bytes : destination.ipv6Mapped
            body += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff)]
        case .unix(let source, let destination):
            family = 3
            body += source.prefix(108) + [UInt8](repeating: 0, count: 108 - min(108, source.count))
            body += destination.prefix(108) + [UInt8](repeating: 0, count: 108 - min(108, destination.count))
        }
        for tlv in tlvs {
            body += [tlv.type, UInt8(tlv.value.count >> 8), UInt8(tlv.value.count & 0xff)] + tlv.value
        }
        precondition(body.count <= Int(UInt16.max), "a PROXY v2 header carries at most 65535 bytes after its fixed part")
        return Self.signature + [0x20 | command.rawValue, family << 4 | transport, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
    }

    /// What ``decode(_:)`` found at the start of a connection's bytes.
    public enum Decoded: Sendable, Equatable {
        /// Not enough bytes yet: at least `needed` in all.
        case incomplete(needed: Int)
        /// A complete, well-formed header of `length` bytes; what follows is the client's data.
        case header(ProxyHeaderV2, length: Int)
    }

    /// Why bytes are not a valid v2 header: the connection is closed and counted, never relayed.
    public enum DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
        /// The first 12 bytes are not the v2 signature (a client speaking to the listener directly?).
        case signature
        /// The version nibble is not 2.
        case version(UInt8)
        /// A command other than LOCAL (0) or PROXY (1).
        case command(UInt8)
        /// A family other than UNSPEC, INET, INET6, UNIX, or a transport other than 0, 1, 2.
        case family(UInt8)
        /// The length field is shorter than the family's addresses.
        case length(Int, minimum: Int)
        /// A TLV runs past the header's end.
        case tlv(offset: Int)
        /// The CRC-32C TLV does not match the header.
        case checksum

        /// What was wrong with the bytes and what was expected, one line for the log.
        public var description: String {
            switch self {
            case .signature: "not a PROXY protocol v2 header (no signature)"
            case .version(let version): "PROXY protocol version \(version); expected 2"
            case .command(let command): "PROXY v2 command \(command); expected LOCAL (0) or PROXY (1)"
            case .family(let byte): "PROXY v2 family/transport byte 0x\(String(byte, radix: 16)); expected a known family and transport"
            case .length(let length, let minimum): "PROXY v2 length \(length), shorter than its addresses (\(minimum))"
            case .tlv(let offset): "PROXY v2 TLV at byte \(offset) runs past the header"
            case .checksum: "PROXY v2 CRC-32C does not match"
            }
        }
    }

    /// Reads a header from the start of `bytes`. Throws as soon as the bytes seen cannot begin a
    /// valid header (a wrong signature byte fails at that byte, not after waiting for 16), so a
    /// client that is not a proxy is refused at once. Linear in the header's length.
    public static func decode(_ bytes: some Collection<UInt8>) throws(DecodeError) -> Decoded {
        let bytes = Array(bytes.prefix(maximumLength))
        for (index, byte) in bytes.prefix(signature.count).enumerated() where byte != signature[index] { throw .signature }
        guard bytes.count >= fixedLength else { return .incomplete(needed: fixedLength) }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { throw .version(versionCommand >> 4) }
        guard let command = Command(rawValue: versionCommand & 0x0f) else { throw .command(versionCommand & 0x0f) }
        let family = bytes[13] >> 4
        let transport = bytes[13] & 0x0f
        guard family <= 3, transport <= 2 else { throw .family(bytes[13]) }
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        let addressLength = [0, 12, 36, 216][Int(family)]
        guard length >= addressLength else { throw .length(length, minimum: addressLength) }
        let total = fixedLength + length
        guard bytes.count >= total else { return .incomplete(needed: total) }
        let start = fixedLength
        let addresses: Addresses
        switch family {
        case 1:
            let source = IPAddress.v4(bytes[start..<start + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
            let destination = IPAddress.v4(bytes[start + 4..<start + 8].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
            addresses = .ip(source: source, sourcePort: port(bytes, start + 8), destination: destination, destinationPort: port(bytes, start + 10))
        case 2:
            addresses = .ip(
                source: .v6(Array(bytes[start..<start + 16])), sourcePort: port(bytes, start + 32),
                destination: .v6(Array(bytes[start + 16..<start + 32])), destinationPort: port(bytes, start + 34))
        case 3:
            func path(_ from: Int) -> [UInt8] { Array(bytes[from..<from + 108].prefix { $0 != 0 }) }
            addresses = .unix(source: path(start), destination: path(start + 108))
        default:
            addresses = .unspecified
        }
        var tlvs: [(type: UInt8, value: [UInt8])] = []
        var offset = start + addressLength
        var checksumOffset: Int?
        while offset < total {
            guard offset + 3 <= total else { throw .tlv(offset: offset) }
            let valueLength = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            guard offset + 3 + valueLength <= total else { throw .tlv(offset: offset) }
            let type = bytes[offset]
            if type == crc32cType {
                guard valueLength == 4 else { throw .tlv(offset: offset) }
                checksumOffset = offset + 3
            }
            tlvs.append((type, Array(bytes[offset + 3..<offset + 3 + valueLength])))
            offset += 3 + valueLength
        }
        if let checksumOffset {
            var zeroed = Array(bytes[..<total])
            let sent = UInt32(zeroed[checksumOffset]) << 24 | UInt32(zeroed[checksumOffset + 1]) << 16 | UInt32(zeroed[checksumOffset + 2]) << 8 | UInt32(zeroed[checksumOffset + 3])
            for index in checksumOffset..<checksumOffset + 4 { zeroed[index] = 0 }
            guard crc32c(zeroed) == sent else { throw .checksum }
        }
        // LOCAL: the addresses (if any) are to be ignored.
        return .header(ProxyHeaderV2(command: command, transport: transport, addresses: command == .local ? .unspecified : addresses, tlvs: tlvs), length: total)
    }

    private static func port(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }

    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: headers are short.
    static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }
}
