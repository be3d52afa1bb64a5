import CLibBPF
import StraitSystem

/// A `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` seen from Swift: slot `index` holds one socket of a
/// `SO_REUSEPORT` group, which an `sk_reuseport` program selects with `bpf_sk_select_reuseport`.
///
/// Slots are written by descriptor (the kernel stores the socket, not the number, so the caller may
/// close its descriptor afterwards without emptying the slot only if another descriptor keeps the
/// socket open). When a socket closes, the kernel empties its slot itself: a closed socket is never
/// selected. Reads return the socket's cookie (maps with 8-byte values). Every call is one bpf(2).
public struct ReuseportSocketArray: Sendable {
    /// The kernel map; shared with whoever else holds it (its owner closes it).
    public let map: BPFMap

    /// Wraps `map`, which must be a `REUSEPORT_SOCKARRAY` keyed by a 32-bit index.
    public init(_ map: BPFMap) throws(BPFError) {
        guard map.type == BPF_MAP_TYPE_REUSEPORT_SOCKARRAY else {
            throw .unsupported("map '\(map.name)' is not a REUSEPORT_SOCKARRAY")
        }
        guard map.keySize == 4, map.valueSize == 4 || map.valueSize == 8 else {
            throw .layoutMismatch(map: map.name, part: "key", swiftSize: 4, kernelSize: map.keySize)
        }
        self.map = map
    }

    /// Slots in the array (`max_entries`); a socket's index must be below it.
    public var capacity: Int { map.maxEntries }

    /// Puts the socket open at `fd` in slot `index`. The socket must be bound with `SO_REUSEPORT`
    /// (and listening, for TCP), of the same family and protocol as the map's other sockets.
    /// `flags: .noExist` refuses to replace a live socket (EEXIST).
    public func setSocket(_ fd: CInt, at index: UInt32, flags: BPFMap.UpdateFlags = .any) throws(BPFError) {
        var key = index
        if map.valueSize == 8 {
            var value = UInt64(fd)
            try map.update(key: &key, value: &value, flags: flags)
        } else {
            var value = UInt32(fd)
            try map.update(key: &key, value: &value, flags: flags)
        }
    }

    /// Empties slot `index`; returns whether it held a socket. The socket stays open and in its
    /// group: only this program stops choosing it.
    @discardableResult
    public func removeSocket(at index: UInt32) throws(BPFError) -> Bool {
        var key = index
        return try map.delete(key: &key)
    }

    /// The cookie (`SO_COOKIE`) of the socket in slot `index`, or nil when the slot is empty.
    public func socketCookie(at index: UInt32) throws(BPFError) -> UInt64? {
        guard map.valueSize == 8 else { throw .unsupported("map '\(map.name)' has 4-byte values; cookies need 8") }
        var key = index
        var value: UInt64 = 0
        return try map.lookup(key: &key, value: &value) ? value : nil
    }
}
