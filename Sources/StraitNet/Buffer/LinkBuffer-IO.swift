import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Socket I/O straight over the node chain: `readv` fills the tail's free space (and a fresh node
/// when that is short), `writev` sends from the readable segments in place. No user-space copy.
/// A single vector goes through plain `read`/`write`, which spare the kernel the iovec import.
extension LinkBuffer {
    /// Most segments handed to one `writev`.
    static let maximumWriteVectors = 64

    /// Reads what the socket has, up to about `limit` bytes, into the tail and makes it readable.
    ///
    /// Uses the tail node's free space first; when that is under half of `limit` (or under 1 KiB),
    /// a second vector points at a new pooled node of the missing size, which goes back to the pool
    /// if the read did not reach it. `.done(0)` is end of stream.
    public func read(from fd: CInt, limit: Int) throws(SystemCallError) -> NonBlockingResult<Int> {
        precondition(unflushedBytes == 0, "reading from a socket into a buffer with staged, unflushed bytes")
        var tailFree = 0
        if let last = segments.indices.last, segments[last].writable {
            tailFree = segments[last].node.capacity - segments[last].filled
        }
        let spare: BufferNode? = tailFree >= 1024 && tailFree * 2 >= limit ? nil : NodePool.take(minimumCapacity: max(limit - tailFree, 1024))
        let result: NonBlockingResult<Int>
        do {
            result = try readVectors(tailFree: tailFree, spare: spare, fd: fd)
        } catch {
            spare?.release()
            throw error
        }
        guard case .done(let bytes) = result, bytes > 0 else {
            spare?.release()
            return result
        }
        let intoTail = min(bytes, tailFree)
        if intoTail > 0 {
            segments[segments.count - 1].filled += intoTail
            stage(intoTail)
        }
        if let spare {
            if bytes > intoTail {
                appendSegment(Segment(node: spare, start: 0, end: 0, filled: bytes - intoTail, writable: true))
                stage(bytes - intoTail)
            } else {
                spare.release()
            }
        }
        publishStaged()
        return result
    }

    private func readVectors(tailFree: Int, spare: BufferNode?, fd: CInt) throws(SystemCallError) -> NonBlockingResult<Int> {
        try withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2) { vectors throws(SystemCallError) -> NonBlockingResult<Int> in
            var count = 0
            if tailFree > 0, let last = segments.last {
                vectors[count] = iovec(iov_base: last.node.base + last.filled, iov_len: tailFree)
                count += 1
            }
            if let spare {
                vectors[count] = iovec(iov_base: spare.base, iov_len: spare.capacity)
                count += 1
            }
            lastReadCapacity = tailFree + (spare?.capacity ?? 0)
            if count == 1 { return try SocketCall.read(fd, vectors[0].iov_base, vectors[0].iov_len) }
            return try SocketCall.readv(fd, vectors.baseAddress!, count)
        }
    }

    /// Sends readable bytes with one `writev` over up to ``maximumWriteVectors`` segments, consumes
    /// what the kernel took and releases sent nodes. `.wouldBlock` when the socket buffer is full.
    public func write(to fd: CInt) throws(SystemCallError) -> NonBlockingResult<Int> {
        guard readableBytes > 0 else { return .done(0) }
        settleReadCursor()
        let result = try withUnsafeTemporaryAllocation(of: iovec.self, capacity: Self.maximumWriteVectors) { vectors throws(SystemCallError) -> NonBlockingResult<Int> in
            var count = 0
            var index = readIndex
            var offset = readOffset
            var gathered = 0
            while gathered < readableBytes && count < vectors.count {
                let segment = segments[index]
                let length = min(segment.end - offset, readableBytes - gathered)
                if length > 0 {
                    vectors[count] = iovec(iov_base: segment.node.base + offset, iov_len: length)
                    count += 1
                    gathered += length
                }
                index += 1
                if index < segments.count { offset = segments[index].start }
            }
            if count == 1 { return try SocketCall.write(fd, vectors[0].iov_base, vectors[0].iov_len) }
            return try SocketCall.writev(fd, vectors.baseAddress!, count)
        }
        if case .done(let bytes) = result {
            advance(bytes)
            release()
        }
        return result
    }
}
