/// How a ``SteeringGroup`` chooses the member socket for each new connection or datagram.
public enum SteeringPolicy: Sendable, Hashable, CustomStringConvertible {
    /// No program: the kernel's hash of the 4-tuple (the baseline). Members that leave remap
    /// about half of all flows.
    case kernel
    /// Maglev consistent hashing of the client address or the 4-tuple: when one of N members
    /// leaves, only about 1/N of keys move.
    case consistentHash(HashKey)
    /// UDP: the key is `length` bytes at `offset` of the datagram (a session or connection id), hashed
    /// through the same Maglev table, so every datagram of a session reaches one socket whatever its
    /// source address. A datagram too short for the key goes to `fallback`.
    case payload(offset: Int, length: Int, fallback: PayloadFallback)
    /// Everything to the first member that joined, while it lives; at once to the next one when it
    /// closes or leaves.
    case activeBackup
    /// Spread over all members in proportion to the weights they joined with (weighted Maglev on the 4-tuple).
    case activeActive

    /// What ``SteeringPolicy/consistentHash(_:)`` hashes.
    public enum HashKey: String, Sendable, Hashable {
        /// Source IP: one client always reaches one member.
        case clientAddress = "client"
        /// Source and destination IP and port.
        case fourTuple = "4-tuple"
    }

    /// Where a datagram too short to carry the payload key goes.
    public enum PayloadFallback: Sendable, Hashable, CustomStringConvertible {
        /// The member that joined in this position (0: the first); the kernel's hash if it left.
        case member(Int)
        /// The kernel's hash over live members.
        case kernelHash

        /// The fallback as `strait steer` and the pinned state write it: `member N` or `kernel
        /// hash`.
        public var description: String {
            switch self {
            case .member(let position): "member \(position)"
            case .kernelHash: "kernel hash"
            }
        }
    }

    /// Parses the CLI spelling: `kernel`, `consistent-hash[:client|:4-tuple]`,
    /// `payload:OFFSET:LENGTH[:fallback=N|kernel]`, `active-backup`, `active-active`.
    public init?(parsing text: String) {
        let parts = text.split(separator: ":").map(String.init)
        switch parts.first {
        case "kernel" where parts.count == 1: self = .kernel
        case "consistent-hash":
            guard parts.count <= 2, let key = parts.count == 2 ? HashKey(rawValue: parts[1]) : .clientAddress else { return nil }
            self = .consistentHash(key)
        case "payload":
            guard parts.count >= 3, let offset = Int(parts[1]), let length = Int(parts[2]), offset >= 0,
                (1...Self.maximumKeyLength).contains(length)
            else { return nil }
            var fallback = PayloadFallback.kernelHash
            if parts.count == 4 {
                if parts[3] == "fallback=kernel" {
                    fallback = .kernelHash
                } else if parts[3].hasPrefix("fallback="), let position = Int(parts[3].dropFirst(9)), position >= 0 {
                    fallback = .member(position)
                } else {
                    return nil
                }
            }
            guard parts.count <= 4 else { return nil }
            self = .payload(offset: offset, length: length, fallback: fallback)
        case "active-backup" where parts.count == 1: self = .activeBackup
        case "active-active" where parts.count == 1: self = .activeActive
        default: return nil
        }
    }

    /// Longest payload key the kernel program reads.
    public static let maximumKeyLength = 16

    /// The policy in the form the parser reads back (`kernel`, `hash:client`, …).
    public var description: String {
        switch self {
        case .kernel: "kernel"
        case .consistentHash(let key): "consistent-hash:\(key.rawValue)"
        case .payload(let offset, let length, let fallback):
            "payload:\(offset):\(length):fallback=\({ if case .member(let n) = fallback { "\(n)" } else { "kernel" } }())"
        case .activeBackup: "active-backup"
        case .activeActive: "active-active"
        }
    }
}
