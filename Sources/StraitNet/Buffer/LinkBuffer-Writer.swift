/// The writer half of ``LinkBuffer``. Writing is two steps: calls here stage bytes at the tail, and
/// ``flush()`` makes everything staged readable at once, in order. (On a ``Connection``'s writer,
/// `flush` also sends.)
extension LinkBuffer {
    /// Room for `count` bytes at the tail, to be filled by the caller before ``flush()``.
    ///
    /// Comes from the tail node's free space when it has `count` bytes left; otherwise from a new
    /// pooled node of at least ``defaultNodeSize`` (no allocation once the pool is warm). The pointer
    /// is valid until `flush()`, after which the bytes belong to the reader.
    public func malloc(_ count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(count >= 0, "negative byte count")
        if count == 0 { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        if let last = segments.indices.last, segments[last].writable, segments[last].node.capacity - segments[last].filled >= count {
            let start = segments[last].filled
            segments[last].filled += count
            stage(count)
            return UnsafeMutableRawBufferPointer(start: segments[last].node.base + start, count: count)
        }
        let node = NodePool.take(minimumCapacity: max(count, Self.defaultNodeSize))
        appendSegment(Segment(node: node, start: 0, end: 0, filled: count, writable: true))
        stage(count)
        return UnsafeMutableRawBufferPointer(start: node.base, count: count)
    }

    /// Makes every staged byte readable. No copy, no allocation.
    public func flush() {
        publishStaged()
    }

    /// Copies `bytes` to the tail (one copy; see ``malloc(_:)`` for where the memory comes from).
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        malloc(bytes.count).copyMemory(from: bytes)
    }

    /// Copies a byte collection to the tail.
    public func write(_ bytes: some Collection<UInt8>) {
        let count = bytes.count
        guard count > 0 else { return }
        let room = malloc(count)
        if bytes.withContiguousStorageIfAvailable({ room.copyMemory(from: UnsafeRawBufferPointer($0)) }) == nil {
            _ = room.initializeMemory(as: UInt8.self, from: bytes)
        }
    }

    /// Copies a string's UTF-8 bytes to the tail.
    public func write(string: String) {
        var string = string
        string.withUTF8 { write(UnsafeRawBufferPointer($0)) }
    }

    /// Writes a fixed-width integer, big-endian (network order) unless told otherwise. No allocation.
    public func writeInteger<T: FixedWidthInteger>(_ value: T, bigEndian: Bool = true) {
        var encoded = bigEndian ? value.bigEndian : value.littleEndian
        withUnsafeBytes(of: &encoded) { write($0) }
    }

    /// Splices the caller's bytes into the chain without copying them: a borrowed node points at
    /// `bytes` and retains `owner` until the bytes have been read and released (sent, on a
    /// connection). The caller must keep the memory unchanged while `owner` lives. Takes a node
    /// from the borrowed-node pool (no allocation once warm). Worth it above a few hundred bytes;
    /// below that ``write(_:)`` is as fast.
    public func writeDirect(_ bytes: UnsafeRawBufferPointer, owner: AnyObject?) {
        guard bytes.count > 0 else { return }
        let node = NodePool.take(borrowing: bytes, owner: owner)
        appendSegment(Segment(node: node, start: 0, end: 0, filled: bytes.count, writable: false))
        stage(bytes.count)
    }

    /// Splices a static string's bytes in without copying (they live as long as the program).
    public func writeDirect(_ bytes: StaticString) {
        precondition(bytes.hasPointerRepresentation, "a StaticString built from one scalar has no bytes to point at")
        writeDirect(UnsafeRawBufferPointer(start: bytes.utf8Start, count: bytes.utf8CodeUnitCount), owner: nil)
    }

    /// Moves all of `other`'s readable bytes to this buffer's tail, sharing nodes (no copy).
    /// `other` is left with nothing readable; its own unflushed bytes stay with it.
    public func append(_ other: LinkBuffer) {
        guard other !== self, other.readableBytes > 0 else { return }
        other.moveReadable(other.readableBytes, to: self)
        other.release()
    }
}
