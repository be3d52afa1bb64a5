import Atomics
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One block of memory in a ``LinkBuffer`` chain, shared between buffers by an explicit reference count.
///
/// A node either owns pooled memory of one size class, owns an odd-sized block of its own
/// (requests above the largest class), or borrows a caller's bytes (``LinkBuffer/writeDirect(_:owner:)``),
/// keeping `owner` alive. Every ``LinkBuffer`` segment that points into a node holds one reference;
/// when the last one goes, the node (object and memory together) returns to ``NodePool`` and is
/// handed out again, so a warm process allocates no nodes.
/// Its fields change only while one buffer owns the node, hence `@exclusivity(unchecked)`.
final class BufferNode: @unchecked Sendable {
    /// Start of the node's bytes. Fixed for owned memory; set per use for borrowed bytes.
    @exclusivity(unchecked) private(set) var base: UnsafeMutableRawPointer
    /// How many bytes `base` points at.
    @exclusivity(unchecked) private(set) var capacity: Int
    /// Index into ``NodePool`` size classes; ``NodePool/oversized`` or ``NodePool/borrowed`` otherwise.
    let sizeClass: Int
    /// Keeps borrowed bytes alive; nil for owned memory and for static memory.
    @exclusivity(unchecked) private(set) var owner: AnyObject?
    let references = ManagedAtomic<Int>(0)

    /// Owned memory of `capacity` bytes.
    init(capacity: Int, sizeClass: Int) {
        self.base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        self.capacity = capacity
        self.sizeClass = sizeClass
    }

    /// A node for borrowed bytes; ``lend(_:owner:)`` points it somewhere.
    init(borrowing: Void) {
        self.base = UnsafeMutableRawPointer(bitPattern: 0x10)!
        self.capacity = 0
        self.sizeClass = NodePool.borrowed
    }

    deinit {
        if sizeClass != NodePool.borrowed { base.deallocate() }
    }

    /// Points a borrowed node at the caller's bytes.
    func lend(_ bytes: UnsafeRawBufferPointer, owner: AnyObject?) {
        base = UnsafeMutableRawPointer(mutating: bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 0x10)!)
        capacity = bytes.count
        self.owner = owner
    }

    var isBorrowed: Bool { sizeClass == NodePool.borrowed }

    @inline(__always)
    func retain() {
        references.wrappingIncrement(ordering: .relaxed)
    }

    /// Drops one reference; the last one returns the node to its pool.
    @inline(__always)
    func release() {
        if references.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0 {
            if isBorrowed { owner = nil }
            NodePool.recycle(self)
        }
    }

    /// True when no other buffer (a slice, say) can see this node, so its bytes may be reused.
    @inline(__always)
    var isUniquelyReferenced: Bool { references.load(ordering: .acquiring) == 1 }
}

/// Size-class pools of ``BufferNode``s, shared by all threads.
///
/// Classes are 1, 4, 16, 64 and 256 KiB and 1 MiB; a request is served from the smallest class that
/// fits, so at most 4x the asked size is held. Larger requests get a node of their own that is freed,
/// not pooled. Each class keeps at most `limit` free nodes (about 8 MiB a class for the small ones);
/// nodes beyond that are freed. Taking or returning a node costs one uncontended lock, no allocation
/// once the pool is warm.
enum NodePool {
    static let classSizes = [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20]
    static let classLimits = [8192, 2048, 512, 128, 32, 8]
    /// Size class of a node whose block is its own and is freed on release.
    static let oversized = -1
    /// Size class of a node that points at a caller's bytes.
    static let borrowed = -2
    static let borrowedLimit = 8192

    /// One size class's free nodes.
    private final class FreeList: Sendable {
        let nodes: Mutex<[BufferNode]>
        init(reserving capacity: Int) {
            var nodes: [BufferNode] = []
            nodes.reserveCapacity(capacity)
            self.nodes = Mutex(nodes)
        }
    }

    private static let pools: [FreeList] = classLimits.map { FreeList(reserving: $0) }
    private static let borrowedPool = FreeList(reserving: borrowedLimit)

    /// A node with at least `minimumCapacity` bytes and one reference.
    static func take(minimumCapacity: Int) -> BufferNode {
        let sizeClass = classSizes.firstIndex { $0 >= minimumCapacity } ?? oversized
        let node: BufferNode
        if sizeClass == oversized {
            node = BufferNode(capacity: minimumCapacity, sizeClass: oversized)
        } else {
            node = pools[sizeClass].nodes.withLock { $0.popLast() } ?? BufferNode(capacity: classSizes[sizeClass], sizeClass: sizeClass)
        }
        node.references.store(1, ordering: .relaxed)
        return node
    }

    /// A node pointing at `bytes`, keeping `owner` alive until the node's last release.
    static func take(borrowing bytes: UnsafeRawBufferPointer, owner: AnyObject?) -> BufferNode {
        let node = borrowedPool.nodes.withLock { $0.popLast() } ?? BufferNode(borrowing: ())
        node.lend(bytes, owner: owner)
        node.references.store(1, ordering: .relaxed)
        return node
    }

    static func recycle(_ node: BufferNode) {
        switch node.sizeClass {
        case oversized:
            return  // freed by ARC when the last segment drops it
        case borrowed:
            borrowedPool.nodes.withLock { free in
                if free.count < borrowedLimit { free.append(node) }
            }
        default:
            let limit = classLimits[node.sizeClass]
            pools[node.sizeClass].nodes.withLock { free in
                if free.count < limit { free.append(node) }
            }
        }
    }

    /// Free nodes held per size class (for tests and diagnostics).
    static func freeCounts() -> [Int] {
        pools.map { $0.nodes.withLock { $0.count } }
    }
}
