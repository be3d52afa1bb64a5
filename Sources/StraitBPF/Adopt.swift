import CLibBPF

extension BPFMap {
    /// Takes ownership of a map descriptor received from elsewhere (another process, over a Unix
    /// socket). Closed when the returned map is released.
    public static func adopt(descriptor fd: CInt) throws(BPFError) -> BPFMap {
        try BPFMap(descriptor: Descriptor(taking: fd))
    }

    /// A duplicate of this map's descriptor, owned by the caller (e.g. to send to another process).
    public func duplicateDescriptor() throws(BPFError) -> CInt {
        let copy = try Descriptor.duplicate(descriptor.rawValue, "dup(map \(name))")
        defer { copy.forget() }
        return copy.rawValue
    }
}

extension BPFProgram {
    /// Takes ownership of a program descriptor received from elsewhere. The kernel does not report
    /// the attach type a program was loaded for: pass it if the sender said.
    public static func adopt(descriptor fd: CInt, name: String? = nil, expectedAttachType: bpf_attach_type? = nil) throws(BPFError) -> BPFProgram {
        try BPFProgram(descriptor: Descriptor(taking: fd), name: name, expectedAttachType: expectedAttachType)
    }

    /// A duplicate of this program's descriptor, owned by the caller.
    public func duplicateDescriptor() throws(BPFError) -> CInt {
        let copy = try Descriptor.duplicate(descriptor.rawValue, "dup(program \(name))")
        defer { copy.forget() }
        return copy.rawValue
    }
}
