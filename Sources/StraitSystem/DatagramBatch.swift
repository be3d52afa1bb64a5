import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A reusable batch of datagram buffers for `recvmmsg(2)` and `sendmmsg(2)`: one syscall moves up
/// to ``capacity`` datagrams.
///
/// Layout: `capacity` slots, each a fixed buffer of ``slotSize`` bytes plus the peer's address.
/// ``receive(from:)`` fills slots `0..<count`; the bytes of a slot stay valid until the next receive.
/// To answer, write into a slot (``setPayload(_:at:)``), keep or change its peer, and call
/// ``send(on:range:)``: nothing is copied between the kernel call and the slot buffers.
/// Not thread-safe: one batch per socket per thread. Owns its memory; freed on deinit.
public final class DatagramBatch {
    /// How many datagrams one call moves at most.
    public let capacity: Int
    /// Bytes per datagram buffer; longer datagrams arrive truncated (``isTruncated(_:)``).
    public let slotSize: Int
    private let storage: UnsafeMutableRawPointer
    private let slots: UnsafeMutablePointer<strait_datagram>
    /// Slots filled by the last receive, or set by the caller for a send.
    public var count = 0

    /// `capacity` is capped at 256 (the C side's batch limit).
    public init(capacity: Int = 64, slotSize: Int = 2048) {
        self.capacity = min(max(capacity, 1), 256)
        self.slotSize = slotSize
        storage = .allocate(byteCount: self.capacity * slotSize, alignment: 16)
        slots = .allocate(capacity: self.capacity)
        slots.initialize(repeating: strait_datagram(), count: self.capacity)
    }

    deinit {
        storage.deallocate()
        slots.deallocate()
    }

    /// `recvmmsg` without blocking: how many datagrams arrived (into slots `0..<n`), or
    /// `.wouldBlock` when none is waiting.
    public func receive(from fd: CInt) throws(SystemCallError) -> NonBlockingResult<Int> {
        for index in 0..<capacity {
            slots[index].bytes = storage + index * slotSize
            slots[index].capacity = UInt32(slotSize)
        }
        let result = try nonBlockingCall("recvmmsg") { strait_receive_datagrams(fd, slots, UInt32(capacity)) }
        if case .done(let received) = result { count = Int(received) }
        return result.map(Int.init)
    }

    /// `sendmmsg` of slots in `range` to each slot's peer, without blocking. Returns how many went
    /// out (the kernel may take fewer than asked), or `.wouldBlock` when the send buffer is full.
    public func send(on fd: CInt, range: Range<Int>? = nil) throws(SystemCallError) -> NonBlockingResult<Int> {
        let range = range ?? 0..<count
        guard !range.isEmpty else { return .done(0) }
        for index in range { slots[index].bytes = storage + index * slotSize }
        let result = try nonBlockingCall("sendmmsg") { strait_send_datagrams(fd, slots + range.lowerBound, UInt32(range.count)) }
        return result.map(Int.init)
    }

    /// The payload of slot `index` (valid until the next receive). A datagram longer than
    /// ``slotSize`` was cut: see ``isTruncated(_:)``.
    public func payload(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + index * slotSize, count: Int(slots[index].length))
    }

    /// Whether datagram `index` of the last receive was longer than its slot (`MSG_TRUNC`): its tail was dropped.
    public func isTruncated(_ index: Int) -> Bool { slots[index].truncated != 0 }

    /// Writes `bytes` as the payload of slot `index` (for a send); at most ``slotSize`` bytes.
    public func setPayload(_ bytes: UnsafeRawBufferPointer, at index: Int) {
        let length = min(bytes.count, slotSize)
        if length > 0 { (storage + index * slotSize).copyMemory(from: bytes.baseAddress!, byteCount: length) }
        slots[index].length = UInt32(length)
        slots[index].capacity = UInt32(length)
    }

    /// Marks slot `index`'s current payload (as received) to be sent back unchanged, to its peer.
    public func prepareEcho(_ index: Int) {
        slots[index].capacity = slots[index].length
    }

    /// The peer of slot `index` (the sender after a receive; the destination for a send).
    public func peer(_ index: Int) -> (address: IPAddress, port: UInt16)? {
        withUnsafeBytes(of: &slots[index].peer) { bytes in
            switch CInt(bytes.load(as: sa_family_t.self)) {
            case AF_INET:
                let address = bytes.load(as: sockaddr_in.self)
                return (.v4(address.sin_addr.s_addr), UInt16(bigEndian: address.sin_port))
            case AF_INET6:
                let address = bytes.load(as: sockaddr_in6.self)
                return (.v6(withUnsafeBytes(of: address.sin6_addr) { Array($0) }), UInt16(bigEndian: address.sin6_port))
            default:
                return nil
            }
        }
    }

    /// Sets the destination of slot `index` (for a send) to an IPv4 or IPv6 address and port.
    public func setPeer(_ address: IPAddress, port: UInt16, at index: Int) {
        withUnsafeMutableBytes(of: &slots[index].peer) { bytes in
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            switch address {
            case .v4(let raw):
                var value = sockaddr_in()
                value.sin_family = sa_family_t(AF_INET)
                value.sin_port = port.bigEndian
                value.sin_addr.s_addr = raw
                bytes.storeBytes(of: value, as: sockaddr_in.self)
                slots[index].peer_length = UInt32(MemoryLayout<sockaddr_in>.size)
            case .v6(let raw):
                var value = sockaddr_in6()
                value.sin6_family = sa_family_t(AF_INET6)
                value.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &value.sin6_addr) { $0.copyBytes(from: raw) }
                bytes.storeBytes(of: value, as: sockaddr_in6.self)
                slots[index].peer_length = UInt32(MemoryLayout<sockaddr_in6>.size)
            }
        }
    }
}

extension NonBlockingResult {
    /// The result with its value transformed.
    public func map<T>(_ transform: (Value) -> T) -> NonBlockingResult<T> {
        switch self {
        case .done(let value): .done(transform(value))
        case .wouldBlock: .wouldBlock
        }
    }
}
