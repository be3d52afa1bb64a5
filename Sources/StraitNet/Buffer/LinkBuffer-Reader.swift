#if canImport(Glibc)
import Glibc
#endif

/// The reader half of ``LinkBuffer``. Every call that takes a count throws
/// ``LinkBufferError/notEnoughData(requested:readable:)`` and consumes nothing when fewer bytes are
/// readable; callers that frame messages check ``LinkBuffer/readableBytes`` first.
extension LinkBuffer {
    /// The next `count` bytes, consumed. A view into node memory when they sit in one node (no copy);
    /// otherwise one copy into a pooled node. Valid until ``release()``.
    public func next(_ count: Int) throws(LinkBufferError) -> UnsafeRawBufferPointer {
        let view = try peek(count)
        advance(count)
        return view
    }

    /// The next `count` bytes, not consumed. Same copying and lifetime rules as ``next(_:)``.
    public func peek(_ count: Int) throws(LinkBufferError) -> UnsafeRawBufferPointer {
        try require(count)
        if count == 0 { return UnsafeRawBufferPointer(start: nil, count: 0) }
        settleReadCursor()
        let segment = segments[readIndex]
        if segment.end - readOffset >= count {
            return UnsafeRawBufferPointer(start: segment.node.base + readOffset, count: count)
        }
        let copy = NodePool.take(minimumCapacity: count)
        copies.append(copy)
        copyReadable(count, into: copy.base)
        return UnsafeRawBufferPointer(start: copy.base, count: count)
    }

    /// Consumes `count` bytes without looking at them. No copy.
    public func skip(_ count: Int) throws(LinkBufferError) {
        try require(count)
        advance(count)
    }

    /// The bytes up to and including the first `delimiter`, consumed; nil (nothing consumed) when
    /// no delimiter is readable yet. Copies like ``next(_:)``.
    public func until(_ delimiter: UInt8) -> UnsafeRawBufferPointer? {
        guard let length = distance(to: delimiter) else { return nil }
        return try! next(length + 1)
    }

    /// How many readable bytes come before the first `delimiter`, or nil. Scans with `memchr`, no copy.
    public func distance(to delimiter: UInt8) -> Int? {
        guard readableBytes > 0 else { return nil }
        var index = readIndex
        var offset = readOffset
        var scanned = 0
        while scanned < readableBytes {
            let segment = segments[index]
            let length = min(segment.end - offset, readableBytes - scanned)
            if length > 0, let hit = memchr(segment.node.base + offset, CInt(delimiter), length) {
                return scanned + (hit - (segment.node.base + offset))
            }
            scanned += length
            index += 1
            if index < segments.count { offset = segments[index].start }
        }
        return nil
    }

    /// `count` bytes, consumed, copied into a new array (one heap allocation).
    public func readBinary(_ count: Int) throws(LinkBufferError) -> [UInt8] {
        try require(count)
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { storage, initialized in
            if count > 0 { copyReadable(count, into: UnsafeMutableRawPointer(storage.baseAddress!)) }
            initialized = count
        }
        advance(count)
        return bytes
    }

    /// `count` bytes, consumed, decoded as UTF-8 into a new string (invalid sequences become U+FFFD).
    /// Allocates the string unless it is small enough to be stored inline (15 bytes).
    public func readString(_ count: Int) throws(LinkBufferError) -> String {
        let view = try peek(count)
        let string = String(decoding: view, as: UTF8.self)
        advance(count)
        return string
    }

    /// A fixed-width integer, consumed. Big-endian (network order) unless told otherwise. No allocation.
    public func readInteger<T: FixedWidthInteger>(as type: T.Type = T.self, bigEndian: Bool = true) throws(LinkBufferError) -> T {
        let view = try peek(MemoryLayout<T>.size)
        let raw = view.loadUnaligned(as: T.self)
        advance(MemoryLayout<T>.size)
        return bigEndian ? T(bigEndian: raw) : T(littleEndian: raw)
    }

    /// The next `count` bytes moved into a new buffer that shares this buffer's nodes: no byte is
    /// copied, each node touched gains a reference, and the slice stays valid after ``release()``.
    /// Costs one `LinkBuffer` object and its segment ring.
    public func slice(_ count: Int) throws(LinkBufferError) -> LinkBuffer {
        try require(count)
        let slice = LinkBuffer()
        moveReadable(count, to: slice)
        slice.publishStaged()
        return slice
    }

    /// Stages the next `count` readable bytes at `target`'s tail as read-only segments sharing this
    /// buffer's nodes (one reference each), and consumes them here. The caller checked the count.
    func moveReadable(_ count: Int, to target: LinkBuffer) {
        var remaining = count
        while remaining > 0 {
            settleReadCursor()
            let segment = segments[readIndex]
            let step = min(segment.end - readOffset, remaining)
            segment.node.retain()
            target.appendSegment(Segment(node: segment.node, start: readOffset, end: readOffset, filled: readOffset + step, writable: false))
            target.stage(step)
            advance(step)
            remaining -= step
        }
    }

    @inline(__always)
    func require(_ count: Int) throws(LinkBufferError) {
        precondition(count >= 0, "negative byte count")
        if count > readableBytes { throw .notEnoughData(requested: count, readable: readableBytes) }
    }

    /// Copies the next `count` readable bytes to `destination` without consuming them.
    func copyReadable(_ count: Int, into destination: UnsafeMutableRawPointer) {
        var index = readIndex
        var offset = readOffset
        var copied = 0
        while copied < count {
            let segment = segments[index]
            let step = min(segment.end - offset, count - copied)
            if step > 0 {
                (destination + copied).copyMemory(from: segment.node.base + offset, byteCount: step)
                copied += step
            }
            index += 1
            if index < segments.count { offset = segments[index].start }
        }
    }
}
