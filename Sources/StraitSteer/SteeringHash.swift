import StraitKernelABI
import StraitMaglev
import StraitSystem

/// The hash steer.bpf.c computes over a key (FNV-1a, then murmur3's finaliser), mirrored in Swift
/// so placement can be predicted and checked: the same bytes give the same bucket on both sides.
public enum SteeringHash {
    /// The 32-bit bucket hash of `bytes`, equal to the kernel program's for the same bytes. Pure;
    /// one pass, no allocation.
    public static func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        Maglev.mix(fnv1a(bytes))
    }

    static func fnv1a<Bytes: Sequence>(_ bytes: Bytes, seed: UInt32 = UInt32(STRAIT_STEER_FNV_OFFSET)) -> UInt32 where Bytes.Element == UInt8 {
        var hash = seed
        for byte in bytes {
            hash ^= UInt32(byte)
            hash = hash &* UInt32(STRAIT_STEER_FNV_PRIME)
        }
        return hash
    }

    /// The key bytes the program hashes for a client, in the order it reads them: source IP, then
    /// (4-tuple) destination IP and source and destination ports in network byte order.
    public static func key(_ key: SteeringPolicy.HashKey, source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16) -> [UInt8] {
        switch key {
        case .clientAddress: source.bytes
        case .fourTuple:
            source.bytes + destination.bytes + withUnsafeBytes(of: sourcePort.bigEndian) { Array($0) }
                + withUnsafeBytes(of: destinationPort.bigEndian) { Array($0) }
        }
    }

    /// The table bucket a key lands in.
    public static func bucket<Bytes: Sequence>(_ bytes: Bytes) -> Int where Bytes.Element == UInt8 {
        Int(hash(bytes) % UInt32(STRAIT_STEER_TABLE_SIZE))
    }
}
