import CLibBPF

/// Reads records from a `BPF_MAP_TYPE_RINGBUF` map.
///
/// Records are delivered to the handler as raw bytes that are valid only during the call (they
/// point into the shared ring; no copy is made). One reader per ring buffer; not thread-safe.
public final class RingBufferReader {
    private var ring: OpaquePointer?
    private let box: HandlerBox

    /// Called once per record; return false to stop the current ``poll(timeoutMilliseconds:)``.
    public typealias Handler = (UnsafeRawBufferPointer) -> Bool

    final class HandlerBox {
        let handler: Handler
        init(_ handler: @escaping Handler) { self.handler = handler }
    }

    /// A reader of `map` (a `BPF_MAP_TYPE_RINGBUF`) that calls `handler` per record. The reader owns
    /// libbpf's ring state (an mmap of the ring, freed with the reader); it does not own `map`, which
    /// must outlive it.
    public init(map: BPFMap, handler: @escaping Handler) throws(BPFError) {
        guard map.type == BPF_MAP_TYPE_RINGBUF else {
            throw .unsupported("map '\(map.name)' is not a ring buffer")
        }
        box = HandlerBox(handler)
        let context = Unmanaged.passUnretained(box).toOpaque()
        ring = try libbpfPointer("ring_buffer__new(\(map.name))") {
            ring_buffer__new(map.fileDescriptor, { context, data, size in
                guard let context, let data else { return 0 }
                let box = Unmanaged<HandlerBox>.fromOpaque(context).takeUnretainedValue()
                return box.handler(UnsafeRawBufferPointer(start: data, count: size)) ? 0 : -1
            }, context, nil)
        }
    }

    deinit {
        if let ring { ring_buffer__free(ring) }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for records and handles them. Returns how many
    /// were handled; stops early if the handler returned false.
    @discardableResult
    public func poll(timeoutMilliseconds: Int32) throws(BPFError) -> Int {
        let result = ring_buffer__poll(ring, timeoutMilliseconds)
        if result == -4 { return 0 }  // EINTR: a signal arrived; the caller decides whether to go on
        if result < 0 && result != -1 { throw .call("ring_buffer__poll", .init(rawValue: -result)) }
        return Int(max(result, 0))
    }

    /// Handles whatever is ready without waiting.
    @discardableResult
    public func drain() throws(BPFError) -> Int {
        let result = ring_buffer__consume(ring)
        if result < 0 && result != -1 { throw .call("ring_buffer__consume", .init(rawValue: -result)) }
        return Int(max(result, 0))
    }
}
