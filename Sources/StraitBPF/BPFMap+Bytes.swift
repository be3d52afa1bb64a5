extension BPFMap {
    /// Writes a value given as raw bytes at a 32-bit key: for values too large to be a Swift type
    /// (a lookup table of thousands of entries). `bytes` must be exactly ``valueSize`` long. One
    /// bpf(2) call; an array map's value is replaced in one copy.
    public func update(index: UInt32, bytes: UnsafeRawBufferPointer, flags: UpdateFlags = .any) throws(BPFError) {
        guard keySize == 4 else { throw .layoutMismatch(map: name, part: "key", swiftSize: 4, kernelSize: keySize) }
        guard bytes.count == valueSize, let base = bytes.baseAddress else {
            throw .layoutMismatch(map: name, part: "value", swiftSize: bytes.count, kernelSize: valueSize)
        }
        var key = index
        try update(key: &key, value: base, flags: flags)
    }

    /// Reads the value at a 32-bit key as raw bytes, or nil when absent.
    public func bytes(at index: UInt32) throws(BPFError) -> [UInt8]? {
        guard keySize == 4 else { throw .layoutMismatch(map: name, part: "key", swiftSize: 4, kernelSize: keySize) }
        var key = index
        let value = UnsafeMutableRawBufferPointer.allocate(byteCount: max(valueSize, 1), alignment: 8)
        defer { value.deallocate() }
        guard try lookup(key: &key, value: value.baseAddress!) else { return nil }
        return Array(value.prefix(valueSize))
    }
}
