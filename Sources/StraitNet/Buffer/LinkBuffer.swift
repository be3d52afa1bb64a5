import DequeModule

/// A byte queue made of a chain of pooled, reference-counted memory nodes: the reader takes bytes
/// off the front, the writer adds them at the back, and sockets read into and write from the nodes
/// directly (`readv`/`writev`), so the kernel is the only one copying bytes on the I/O path.
///
/// ```
///   segments (a ring of node references, oldest first)
///   ┌──────────────┐   ┌───────────────────┐   ┌──────────────────────────┐
///   │ node A       │ → │ node B (a slice's │ → │ node C (writable tail)    │
///   │ ░░░░░▓▓▓▓▓▓▓ │   │  node, shared)    │   │ ▓▓▓▓▓▓▓▒▒▒▒▒·········     │
///   └──────────────┘   └───────────────────┘   └──────────────────────────┘
///    ^start ^read                                      ^end   ^filled  ^capacity
///
///   ░ read, kept until release()   ▓ readable (flushed)   ▒ malloc'd, not yet flushed   · free
///   0 <= start <= read <= end <= filled <= capacity, per segment
/// ```
///
/// Cursors, in order along the chain: *release* (the first segment's `start`: memory before it is
/// gone), *read* (`readIndex`/`readOffset`), *flush* (each segment's `end`: what a reader may see)
/// and *write* (each segment's `filled`: what ``malloc(_:)`` has handed out).
///
/// **Lifetimes.** A view returned by ``next(_:)``, ``peek(_:)`` or ``until(_:)`` points into node
/// memory and stays valid until the next ``release()`` on this buffer (or the buffer's end); a
/// Connection releases its input after each `onRequest` call. Bytes moved out with ``slice(_:)`` or
/// ``append(_:)`` stay valid as long as the buffer that received them.
///
/// **Copies and allocations.** Reads inside one node return views (no copy). A read that spans
/// nodes copies once, into a pooled node held until ``release()``. ``readBinary(_:)`` and
/// ``readString(_:)`` always copy into a new Swift value (a heap allocation). ``slice(_:)``,
/// ``append(_:)`` and ``writeDirect(_:owner:)`` copy no bytes. ``write(_:)`` copies the caller's
/// bytes once into the tail node. The node ring itself keeps its capacity, so a warm buffer's
/// operations allocate nothing (``slice(_:)`` creates one `LinkBuffer` object).
///
/// **Threads.** A LinkBuffer is not thread-safe: one thread uses it at a time. It may be handed
/// to another thread (hand-over through a lock or a queue), and slices may be read on other threads
/// while the original keeps writing, because shared nodes are read-only to everyone but the
/// buffer that created them, and that buffer writes only past every slice's end.
///
/// **Exclusivity.** Its stored state is marked `@exclusivity(unchecked)`: one thread at a time, and
/// no call keeps an access open across user code, so the runtime's dynamic checks (about 4% of a
/// loop's CPU in the HTTP benchmark, with Connection's and EventLoop's) only cost.
public final class LinkBuffer {
    /// A window onto one node. Each segment holds one reference on its node.
    struct Segment {
        let node: BufferNode
        var start: Int
        var end: Int
        var filled: Int
        /// Only a buffer's own `malloc`ed nodes are writable; shared and borrowed ones never are.
        let writable: Bool
    }

    @exclusivity(unchecked) var segments: Deque<Segment> = []
    /// The segment the next read starts in, and the offset in its node.
    @exclusivity(unchecked) var readIndex = 0
    @exclusivity(unchecked) var readOffset = 0
    /// Flushed, unread bytes.
    @exclusivity(unchecked) public private(set) var readableBytes = 0
    /// Bytes handed out by malloc/write/writeDirect/append since the last flush.
    @exclusivity(unchecked) public private(set) var unflushedBytes = 0
    /// The first segment that may hold unflushed bytes.
    @exclusivity(unchecked) var flushIndex = 0
    /// Nodes holding copies made by reads that spanned nodes; released by ``release()``.
    @exclusivity(unchecked) var copies: [BufferNode] = []

    /// How many bytes the last socket read offered the kernel; a read that returned fewer emptied
    /// the socket.
    @exclusivity(unchecked) public internal(set) var lastReadCapacity = 0

    /// Default size of a node the writer adds when the tail is full (a 4 KiB size class).
    public static let defaultNodeSize = 4096
    /// Largest tail node a fully read buffer keeps for the next bytes (16 KiB, the default read
    /// size); larger ones, from bulk reads, go back to the pool so idle connections stay small.
    public static let largestIdleTail = 16 << 10

    /// An empty buffer; it takes no node from the pool until something is written or read into it.
    public init() {}

    deinit {
        for segment in segments { segment.node.release() }
        for node in copies { node.release() }
    }

    /// True when no flushed byte is left to read.
    public var isEmpty: Bool { readableBytes == 0 }

    /// Drops everything before the read cursor: fully read nodes go back to their pools, and every
    /// view handed out by ``next(_:)``, ``peek(_:)`` and ``until(_:)`` becomes invalid. No allocation.
    public func release() {
        for node in copies { node.release() }
        copies.removeAll(keepingCapacity: true)
        while readIndex > 0 {
            segments.removeFirst().node.release()
            readIndex -= 1
            flushIndex -= 1
        }
        guard !segments.isEmpty else { return }
        segments[0].start = readOffset
        let head = segments[0]
        guard head.start == head.filled else { return }
        if segments.count > 1 {
            // Fully read and not the tail: nothing can be written into it any more.
            segments.removeFirst().node.release()
            flushIndex = max(0, flushIndex - 1)
            readOffset = segments[0].start
        } else if head.writable && head.node.isUniquelyReferenced {
            if head.node.capacity > Self.largestIdleTail {
                // A large node from a bulk read: back to the pool rather than held by an idle buffer.
                segments.removeFirst().node.release()
                readIndex = 0
                readOffset = 0
                flushIndex = 0
                return
            }
            // The lone tail, fully read and seen by no slice: reuse it from its first byte.
            segments[0].start = 0
            segments[0].end = 0
            segments[0].filled = 0
            readOffset = 0
        }
    }

    /// Drops every byte, read or not, flushed or not, returning all nodes to their pools.
    public func removeAll() {
        for segment in segments { segment.node.release() }
        segments.removeAll(keepingCapacity: true)
        for node in copies { node.release() }
        copies.removeAll(keepingCapacity: true)
        readIndex = 0
        readOffset = 0
        flushIndex = 0
        readableBytes = 0
        unflushedBytes = 0
    }

    /// Moves the read cursor forward `count` readable bytes (the caller checked they exist).
    @inline(__always)
    func advance(_ count: Int) {
        var remaining = count
        while remaining > 0 {
            let available = segments[readIndex].end - readOffset
            if available == 0 {
                readIndex += 1
                readOffset = segments[readIndex].start
                continue
            }
            let step = min(available, remaining)
            readOffset += step
            remaining -= step
        }
        readableBytes -= count
    }

    /// Skips exhausted segments so the read cursor stands on the next readable byte.
    @inline(__always)
    func settleReadCursor() {
        while readIndex < segments.count - 1 && readOffset == segments[readIndex].end
            && segments[readIndex].end == segments[readIndex].filled
        {
            readIndex += 1
            readOffset = segments[readIndex].start
        }
    }

    /// Adds a segment at the tail (taking over one reference the caller holds).
    func appendSegment(_ segment: Segment) {
        if segments.isEmpty { readOffset = segment.start }
        segments.append(segment)
    }

    /// Publishes staged bytes from `flushIndex` on.
    func publishStaged() {
        guard unflushedBytes > 0 else { return }
        var index = flushIndex
        while index < segments.count {
            segments[index].end = segments[index].filled
            index += 1
        }
        readableBytes += unflushedBytes
        unflushedBytes = 0
        flushIndex = max(0, segments.count - 1)
    }

    func stage(_ count: Int) {
        unflushedBytes += count
    }
}

/// Errors from ``LinkBuffer`` reads.
public enum LinkBufferError: Error, Equatable, Sendable {
    /// Fewer readable bytes than asked for; nothing was consumed.
    case notEnoughData(requested: Int, readable: Int)
}
