import StraitSystem

/// Why a `strait drop` operation was refused or failed. Each description says what to do.
public enum DropError: Error, CustomStringConvertible {
    case invalidRule(String, String)
    /// A rule file that is not text, is too large, or has a line that is not a rule: the reason,
    /// which names the line.
    case invalidFile(String)
    /// Nothing is pinned under the directory: no rule or attachment exists yet.
    case notLoaded(String)
    /// The change would drop traffic from the address this command is run from.
    case wouldLockOut(ProtectedSource, change: String)
    case notAttached(String)
    case alreadyAttached(String)
    /// The driver has no native XDP; generic mode works everywhere.
    case nativeUnsupported(String)
    case tooManyRules(kind: String, limit: Int)

    /// The part after the rule text, for messages that add their own context.
    public var reason: String {
        if case .invalidRule(_, let reason) = self { return reason }
        return description
    }

    /// What went wrong and what to do, for the operator; the CLI prints it as is.
    public var description: String {
        switch self {
        case .invalidRule(let text, let reason):
            "invalid rule '\(text)': \(reason)"
        case .invalidFile(let reason):
            "invalid rule file: \(reason)"
        case .notLoaded(let directory):
            "strait drop is not loaded (nothing pinned under \(directory)): `strait drop add RULE`, `load FILE` or `attach IFACE` loads it."
        case .wouldLockOut(let source, let change):
            "refused: \(change) would drop traffic from \(source) — the address this command is run from (\(source.origin)). Add a rule that admits it first, or pass --force if you are sure."
        case .notAttached(let interface):
            "strait drop is not attached to \(interface) (`strait drop list` shows where it is)."
        case .alreadyAttached(let interface):
            "an XDP program is attached to \(interface) already: detach it first (`strait drop detach \(interface)`, or `ip link set dev \(interface) xdp off` for another tool's)."
        case .nativeUnsupported(let interface):
            "the driver of \(interface) has no native XDP: use --mode generic (same rules, the socket buffer is built before the drop)."
        case .tooManyRules(let kind, let limit):
            "too many \(kind) rules: one set holds at most \(limit)."
        }
    }
}

/// An address whose packets a rule change must not drop: the peer this command is run from.
public struct ProtectedSource: Sendable, Equatable, CustomStringConvertible {
    /// The peer's address; rules that would drop it are refused.
    public var address: IPAddress
    /// The local TCP port the peer talks to (the SSH server's), when known.
    public var tcpPort: UInt16?
    /// Where it came from, for messages (e.g. `SSH_CONNECTION`).
    public var origin: String

    /// A protected peer at `address`, talking to local `tcpPort` if known; `origin` names where it
    /// was learned.
    public init(address: IPAddress, tcpPort: UInt16?, origin: String) {
        self.address = address
        self.tcpPort = tcpPort
        self.origin = origin
    }

    /// The address, with the local TCP port when known: `198.18.0.1 (to tcp/22)`.
    public var description: String { tcpPort.map { "\(address) (to tcp/\($0))" } ?? address.description }

    /// The SSH peer of this session, from `SSH_CONNECTION` (`client port server-address server-port`)
    /// or else `SSH_CLIENT` (`client port server-port`). IPv4-mapped addresses count as IPv4.
    /// Empty when the command is not run over SSH.
    public static func fromEnvironment(_ environment: [String: String]) -> [ProtectedSource] {
        if let connection = environment["SSH_CONNECTION"]?.split(separator: " "), connection.count == 4,
            let address = IPAddress(String(connection[0]))
        {
            return [ProtectedSource(address: address.unmapped, tcpPort: UInt16(connection[3]), origin: "SSH_CONNECTION")]
        }
        if let client = environment["SSH_CLIENT"]?.split(separator: " "), client.count == 3, let address = IPAddress(String(client[0])) {
            return [ProtectedSource(address: address.unmapped, tcpPort: UInt16(client[2]), origin: "SSH_CLIENT")]
        }
        return []
    }
}

extension IPAddress {
    /// `::ffff:a.b.c.d` as IPv4; anything else unchanged.
    var unmapped: IPAddress {
        if case .v6(let bytes) = self { return IPAddress(ipv6Mapped: bytes) }
        return self
    }
}

extension ProtectedSource {
    /// Peers of established TCP connections to local `port` (default 22, sshd's), read from
    /// /proc/net/tcp and /proc/net/tcp6 of the calling thread's namespace: they protect an SSH session even when
    /// sudo has cleared `SSH_CONNECTION`. Read-only; unreadable files give no peers.
    public static func establishedPeers(localPort port: UInt16 = 22) -> [ProtectedSource] {
        var peers: [ProtectedSource] = []
        for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                // sl local_address rem_address st …; addresses are hex words in host order, ports in hex.
                guard fields.count > 3, fields[3] == "01" else { continue }
                let local = fields[1].split(separator: ":"), remote = fields[2].split(separator: ":")
                guard local.count == 2, remote.count == 2, UInt16(local[1], radix: 16) == port,
                    let address = Self.procAddress(String(remote[0]))
                else { continue }
                let source = ProtectedSource(address: address.unmapped, tcpPort: port, origin: "established connection to tcp/\(port)")
                if !peers.contains(source) { peers.append(source) }
            }
        }
        return peers
    }

    /// Decodes /proc/net/tcp's address: 8 or 32 hex digits, each 32-bit word in host (little-endian) order.
    static func procAddress(_ hex: String) -> IPAddress? {
        guard hex.count == 8 || hex.count == 32 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 8)
            guard let word = UInt32(hex[index..<next], radix: 16) else { return nil }
            bytes += withUnsafeBytes(of: word.littleEndian) { Array($0) }
            index = next
        }
        return bytes.count == 4 ? .v4(bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }) : .v6(bytes)
    }
}
