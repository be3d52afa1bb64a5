import StraitSystem

/// Which transport a destination-port rule matches.
public enum DropTransport: String, Sendable, Codable, CaseIterable {
    case tcp, udp

    var protocolNumber: UInt8 { self == .tcp ? 6 : 17 }
}

/// One rule: what a frame must carry to match it. In block-list mode a match drops the frame; in
/// allow-list mode a match passes it.
///
/// Text forms (as `strait drop add` and rule files take them, and as `list` prints them):
/// - `198.18.0.0/15`, `2001:db8::/32`, `198.18.0.7` — source address prefix (bare address: one host);
/// - `tcp/22`, `udp/53` — destination port;
/// - `mac 02:00:5e:00:53:01` — Ethernet source address;
/// - `arp 198.18.0.7`, `arp 198.18.0.0/24` — ARP sender IPv4 address or prefix.
public enum DropRule: Hashable, Sendable, CustomStringConvertible, Codable {
    case source(IPPrefix)
    case destinationPort(DropTransport, UInt16)
    case ethernetSource([UInt8])
    case arpSender(IPPrefix)

    /// Parses one of the text forms above; throws ``DropError/invalidRule(_:_:)`` saying what is wrong.
    public init(parsing text: String) throws(DropError) {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let first = words.first else { throw .invalidRule(text, "empty rule") }
        switch (first.lowercased(), words.count) {
        case ("src", 2), ("source", 2):
            self = try .source(Self.prefix(words[1], in: text))
        case ("mac", 2):
            self = .ethernetSource(try Self.mac(words[1], in: text))
        case ("arp", 2):
            let prefix = try Self.prefix(words[1], in: text)
            guard prefix.address.isIPv4 else { throw .invalidRule(text, "ARP rules take IPv4 addresses") }
            self = .arpSender(prefix)
        case ("tcp", 2), ("udp", 2):
            self = try Self.port(first + "/" + words[1], in: text)
        case (_, 1) where first.contains("/") && (first.lowercased().hasPrefix("tcp/") || first.lowercased().hasPrefix("udp/")):
            self = try Self.port(first, in: text)
        case (_, 1):
            self = try .source(Self.prefix(first, in: text))
        default:
            throw .invalidRule(text, "expected a prefix (198.18.0.0/15), tcp/PORT, udp/PORT, `mac ADDRESS` or `arp ADDRESS`")
        }
    }

    /// The rule in the syntax ``init(parsing:)`` reads back: `198.18.0.0/15`, `tcp/22`, `mac
    /// aa:bb:…`, `arp PREFIX`.
    public var description: String {
        switch self {
        case .source(let prefix): prefix.description
        case .destinationPort(let transport, let port): "\(transport.rawValue)/\(port)"
        case .ethernetSource(let bytes): "mac " + bytes.map { hex($0) }.joined(separator: ":")
        case .arpSender(let prefix): "arp \(prefix)"
        }
    }

    /// Decodes a rule from its text form, with the same checks as ``init(parsing:)``; a bad rule
    /// throws its ``DropError``.
    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = try DropRule(parsing: text)
    }

    /// Encodes the rule as its text form (``description``), so rule files and JSON read alike.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// A prefix without host bits: `1.2.3.4/24` is refused with the network it would mean, since
    /// it is often a typo for `/32` or for another network.
    static func prefix(_ word: String, in text: String) throws(DropError) -> IPPrefix {
        guard let prefix = IPPrefix(word) else { throw .invalidRule(text, "'\(word)' is not an address or prefix (ADDRESS or ADDRESS/LENGTH)") }
        let written = word.split(separator: "/", maxSplits: 1).first.flatMap { IPAddress(String($0)) }
        guard written == prefix.address else {
            throw .invalidRule(text, "'\(word)' has host bits set: the network is \(prefix) (or write \(written.map { "\($0)/\($0.isIPv4 ? 32 : 128)" } ?? "the address alone") for one host)")
        }
        return prefix
    }

    static func port(_ word: String, in text: String) throws(DropError) -> DropRule {
        let parts = word.lowercased().split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2, let transport = DropTransport(rawValue: parts[0]) else {
            throw .invalidRule(text, "expected tcp/PORT or udp/PORT")
        }
        guard let port = UInt16(parts[1]), port > 0 else { throw .invalidRule(text, "'\(parts[1])' is not a port (1-65535)") }
        return .destinationPort(transport, port)
    }

    static func mac(_ word: String, in text: String) throws(DropError) -> [UInt8] {
        let bytes = word.split(separator: ":").compactMap { $0.count <= 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, word.split(separator: ":").count == 6 else {
            throw .invalidRule(text, "'\(word)' is not an Ethernet address (six hex bytes separated by colons)")
        }
        return bytes
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
}

/// What a frame that matches no rule gets.
public enum DropMode: String, Sendable, Codable, CaseIterable {
    /// Rules list what to drop; everything else passes (the default).
    case block
    /// Rules list what to pass; every other IPv4, IPv6 and ARP frame is dropped.
    case allow
}

/// A whole rule set: the unit `strait drop load` swaps in at once.
public struct DropRuleSet: Sendable, Codable, Equatable {
    /// What frames that match no rule get.
    public var mode: DropMode
    /// The rules, in the order given; duplicates are kept as written.
    public var rules: [DropRule]

    /// A set in `mode` holding `rules`; the empty block-list set passes everything.
    public init(mode: DropMode = .block, rules: [DropRule] = []) {
        self.mode = mode
        self.rules = rules
    }

    /// The largest rule file read: 64 MiB (a full set of 1,048,576 prefixes is about 20 MiB).
    public static let maximumFileBytes = 64 << 20

    /// Parses a rule file's bytes: UTF-8 (a leading byte-order mark is skipped), at most
    /// ``maximumFileBytes``, no NUL or other control bytes but tab, CR and LF, then as
    /// ``init(parsingFile:)-(String)``. Errors name the line and never echo raw bytes.
    public init(parsingFile bytes: [UInt8]) throws(DropError) {
        guard bytes.count <= Self.maximumFileBytes else { throw .invalidFile("larger than \(Self.maximumFileBytes >> 20) MiB") }
        let body = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? bytes[3...] : bytes[...]
        guard let text = String(validating: body, as: UTF8.self) else { throw .invalidFile("not UTF-8 text") }
        try self.init(parsingFile: text)
    }

    /// Parses a rule file: one rule a line in any text form of ``DropRule``; `#` starts a comment;
    /// a line `mode allow` (or `mode block`, the default) sets the mode. Duplicates collapse.
    /// Errors name the line.
    public init(parsingFile text: String) throws(DropError) {
        var mode = DropMode.block
        var rules: [DropRule] = []
        var seen = Set<DropRule>()
        // `isNewline`: "\r\n" is one Character in Swift, so splitting on "\n" alone would keep a
        // CRLF file as one line.
        for (number, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = String(rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
                .trimmingCharacters(in: [" ", "\t", "\r"])
            if line.isEmpty { continue }
            if line.unicodeScalars.contains(where: { $0.properties.generalCategory == .control && $0 != "\t" }) {
                throw .invalidFile("line \(number + 1): a control character; expected text (is this a binary file?)")
            }
            let words = line.split(separator: " ")
            if words.first == "mode" {
                guard words.count == 2, let parsed = DropMode(rawValue: String(words[1])) else {
                    throw .invalidRule(line, "line \(number + 1): expected `mode block` or `mode allow`")
                }
                mode = parsed
                continue
            }
            let rule: DropRule
            do { rule = try DropRule(parsing: line) } catch {
                throw .invalidRule(line, "line \(number + 1): \(error.reason)")
            }
            if seen.insert(rule).inserted { rules.append(rule) }
        }
        self.init(mode: mode, rules: rules)
    }

    /// Whether an IP packet from `source` to TCP port `tcpPort` (when known) would pass under this
    /// set, by the same rules as the kernel program (Ethernet-address rules are not considered: the
    /// frame's sender is unknown here).
    public func admits(source: IPAddress, tcpPort: UInt16?) -> Bool {
        let matches = rules.contains { rule in
            switch rule {
            case .source(let prefix): prefix.contains(source)
            case .destinationPort(.tcp, let port): port == tcpPort
            default: false
            }
        }
        return mode == .allow ? matches : !matches
    }
}

extension IPPrefix {
    /// Whether `address` lies within this prefix (an IPv4 address never lies within an IPv6 prefix).
    public func contains(_ address: IPAddress) -> Bool {
        address.isIPv4 == self.address.isIPv4 && IPPrefix(address: address, length: length) == self
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
