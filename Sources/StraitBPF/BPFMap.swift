import CLibBPF
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A live BPF map, owning one descriptor. Untyped: keys and values are bytes. Use ``typed(key:value:)``
/// for Swift structs shared with the kernel program.
public final class BPFMap: @unchecked Sendable {
    let descriptor: Descriptor
    /// The map's name: in full when it came from an object file, else as the kernel keeps it (15 characters).
    public let name: String
    /// The map's type (`BPF_MAP_TYPE_*`).
    public let type: bpf_map_type
    /// Bytes in a key; typed access checks it against the Swift key type.
    public let keySize: Int
    /// Bytes in a value; typed access checks it against the Swift value type.
    public let valueSize: Int
    /// The most entries the map holds (`max_entries`), fixed at creation.
    public let maxEntries: Int
    /// The kernel's id for this map (as `bpftool map show` lists it).
    public let id: UInt32

    init(descriptor: Descriptor) throws(BPFError) {
        self.descriptor = descriptor
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        try libbpfCall("bpf_obj_get_info_by_fd(map)") { bpf_obj_get_info_by_fd(descriptor.rawValue, &info, &length) }
        name = withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        type = bpf_map_type(info.type)
        keySize = Int(info.key_size)
        valueSize = Int(info.value_size)
        maxEntries = Int(info.max_entries)
        id = info.id
    }

    /// Opens a map pinned in bpffs. The pin stays; this is one more reference to the map.
    public static func open(pinned path: String) throws(BPFError) -> BPFMap {
        let fd = try libbpfCall("bpf_obj_get(\(path))") { bpf_obj_get(path) }
        return try BPFMap(descriptor: Descriptor(taking: fd))
    }

    /// Pins the map at `path` in bpffs, so it outlives this process. Remove the pin with ``BPFFS/unpin(_:)``.
    public func pin(at path: String) throws(BPFError) {
        try libbpfCall("bpf_obj_pin(\(path))") { bpf_obj_pin(descriptor.rawValue, path) }
    }

    /// The raw descriptor, valid while this map is alive.
    public var fileDescriptor: CInt { descriptor.rawValue }

    /// Whether values are stored once per possible CPU.
    public var isPerCPU: Bool {
        [BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH].contains(type)
    }

    /// Binds Swift types to the map, checking their sizes against the map's key and value sizes.
    public func typed<Key: BitwiseCopyable, Value: BitwiseCopyable>(key: Key.Type, value: Value.Type) throws(BPFError) -> TypedMap<Key, Value> {
        try TypedMap(map: self)
    }

    // MARK: Raw operations; the typed views call these.

    func lookup(key: UnsafeRawPointer, value: UnsafeMutableRawPointer) throws(BPFError) -> Bool {
        let result = bpf_map_lookup_elem(descriptor.rawValue, key, value)
        if result == 0 { return true }
        if -result == Errno.noSuchFileOrDirectory.rawValue { return false }
        throw .call("bpf_map_lookup_elem(\(name))", Errno(rawValue: -result))
    }

    /// Writes one element. `ENOMEM` is retried up to 8 times, 1 ms then twice as long each time
    /// (255 ms in all): a map created with `BPF_F_NO_PREALLOC` allocates each new element from a
    /// per-CPU cache that the kernel refills asynchronously (bpf_mem_alloc, 6.1 and later), so a
    /// burst of inserts can find it empty while memory is free. A lasting shortage still throws.
    func update(key: UnsafeRawPointer, value: UnsafeRawPointer, flags: UpdateFlags) throws(BPFError) {
        var pause: useconds_t = 1_000
        for _ in 0..<8 {
            let result = bpf_map_update_elem(descriptor.rawValue, key, value, flags.rawValue)
            if result == 0 { return }
            guard -result == Errno.noMemory.rawValue else { throw .call("bpf_map_update_elem(\(name))", Errno(rawValue: -result)) }
            usleep(pause)
            pause *= 2
        }
        try libbpfCall("bpf_map_update_elem(\(name))") { bpf_map_update_elem(descriptor.rawValue, key, value, flags.rawValue) }
    }

    func delete(key: UnsafeRawPointer) throws(BPFError) -> Bool {
        let result = bpf_map_delete_elem(descriptor.rawValue, key)
        if result == 0 { return true }
        if -result == Errno.noSuchFileOrDirectory.rawValue { return false }
        throw .call("bpf_map_delete_elem(\(name))", Errno(rawValue: -result))
    }

    func nextKey(after key: UnsafeRawPointer?, into next: UnsafeMutableRawPointer) throws(BPFError) -> Bool {
        let result = bpf_map_get_next_key(descriptor.rawValue, key, next)
        if result == 0 { return true }
        if -result == Errno.noSuchFileOrDirectory.rawValue { return false }
        throw .call("bpf_map_get_next_key(\(name))", Errno(rawValue: -result))
    }

    /// Flags of an update, as in `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`.
    public struct UpdateFlags: OptionSet, Sendable {
        /// The `BPF_*` flag bits.
        public let rawValue: UInt64
        /// Flags from their `BPF_*` bits.
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Create or replace (`BPF_ANY`).
        public static let any = UpdateFlags([])
        /// Only create; fail with EEXIST if present (`BPF_NOEXIST`).
        public static let noExist = UpdateFlags(rawValue: UInt64(BPF_NOEXIST))
        /// Only replace; fail with ENOENT if absent (`BPF_EXIST`).
        public static let exist = UpdateFlags(rawValue: UInt64(BPF_EXIST))
    }

    /// The number of possible CPUs, which sizes per-CPU values.
    public static let possibleCPUs: Int = Int(libbpf_num_possible_cpus())
}

/// A map seen through Swift key and value types whose sizes match the map's (checked once, at
/// creation). Types are fixed-layout structs shared with the C side (`StraitKernelABI`) or plain integers.
///
/// Every call is one bpf(2) syscall; iteration costs one syscall per key.
public struct TypedMap<Key: BitwiseCopyable, Value: BitwiseCopyable>: @unchecked Sendable {
    /// The untyped map this view reads and writes; the view does not own it.
    public let map: BPFMap

    init(map: BPFMap) throws(BPFError) {
        guard MemoryLayout<Key>.size == map.keySize else {
            throw .layoutMismatch(map: map.name, part: "key", swiftSize: MemoryLayout<Key>.size, kernelSize: map.keySize)
        }
        let perCPUSize = map.isPerCPU ? 0 : map.valueSize
        guard map.isPerCPU || MemoryLayout<Value>.size == perCPUSize else {
            throw .layoutMismatch(map: map.name, part: "value", swiftSize: MemoryLayout<Value>.size, kernelSize: map.valueSize)
        }
        guard !map.isPerCPU || MemoryLayout<Value>.size == map.valueSize else {
            throw .layoutMismatch(map: map.name, part: "value", swiftSize: MemoryLayout<Value>.size, kernelSize: map.valueSize)
        }
        self.map = map
    }

    /// The value at `key`, or nil. For per-CPU maps use ``perCPUValues(_:)``.
    public func lookup(_ key: Key) throws(BPFError) -> Value? {
        precondition(!map.isPerCPU, "per-CPU map \(map.name): use perCPUValues(_:)")
        var key = key
        let value = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<Value>.size, alignment: 8)
        defer { value.deallocate() }
        guard try map.lookup(key: &key, value: value) else { return nil }
        return value.loadUnaligned(as: Value.self)
    }

    /// One value per possible CPU for per-CPU maps (each slot padded to 8 bytes by the kernel).
    public func perCPUValues(_ key: Key) throws(BPFError) -> [Value] {
        precondition(map.isPerCPU)
        var key = key
        let stride = (MemoryLayout<Value>.size + 7) & ~7
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: stride * BPFMap.possibleCPUs, alignment: 8)
        defer { buffer.deallocate() }
        guard try map.lookup(key: &key, value: buffer) else { return [] }
        return (0..<BPFMap.possibleCPUs).map { buffer.loadUnaligned(fromByteOffset: $0 * stride, as: Value.self) }
    }

    /// For a per-CPU map whose values are structs of `UInt64` counters only (the layout every
    /// Strait counter struct has): each field summed over CPUs; zeros when `key` is absent.
    public func summedOverCPUs(_ key: Key) throws(BPFError) -> Value {
        precondition(MemoryLayout<Value>.size % 8 == 0, "\(Value.self) is not made of UInt64 counters")
        var total = [UInt64](repeating: 0, count: MemoryLayout<Value>.size / 8)
        for slot in try perCPUValues(key) {
            withUnsafeBytes(of: slot) { raw in
                for index in total.indices { total[index] &+= raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) }
            }
        }
        return total.withUnsafeBytes { $0.loadUnaligned(as: Value.self) }
    }

    /// Creates or replaces (or, with flags, only one of the two).
    public func update(_ key: Key, _ value: Value, flags: BPFMap.UpdateFlags = .any) throws(BPFError) {
        precondition(!map.isPerCPU, "per-CPU map \(map.name): use updatePerCPU")
        var key = key
        var value = value
        try map.update(key: &key, value: &value, flags: flags)
    }

    /// Writes the same value into every CPU's slot (e.g. zero to reset counters).
    public func updatePerCPU(_ key: Key, _ value: Value) throws(BPFError) {
        precondition(map.isPerCPU)
        var key = key
        let stride = (MemoryLayout<Value>.size + 7) & ~7
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: stride * BPFMap.possibleCPUs, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: stride * BPFMap.possibleCPUs)
        for cpu in 0..<BPFMap.possibleCPUs { buffer.storeBytes(of: value, toByteOffset: cpu * stride, as: Value.self) }
        try map.update(key: &key, value: buffer, flags: .any)
    }

    /// Removes `key`; returns whether it was there.
    @discardableResult
    public func delete(_ key: Key) throws(BPFError) -> Bool {
        var key = key
        return try map.delete(key: &key)
    }

    /// Every key, read with `bpf_map_get_next_key`. Keys added or removed meanwhile may or may not appear.
    public func keys() throws(BPFError) -> [Key] {
        var keys: [Key] = []
        let current = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<Key>.size, alignment: 8)
        let next = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<Key>.size, alignment: 8)
        defer { current.deallocate(); next.deallocate() }
        var hasCurrent = false
        while try map.nextKey(after: hasCurrent ? UnsafeRawPointer(current) : nil, into: next) {
            keys.append(next.loadUnaligned(as: Key.self))
            current.copyMemory(from: next, byteCount: MemoryLayout<Key>.size)
            hasCurrent = true
            if keys.count > map.maxEntries { break }  // a map changing under us cannot loop forever
        }
        return keys
    }
}
