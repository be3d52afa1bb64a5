import CLibBPF

/// A live, verified BPF program, owning one descriptor. Attach it with one of the `attach…`
/// methods (see `Links/`); each returns a ``BPFLink`` that detaches when closed.
public final class BPFProgram: @unchecked Sendable {
    let descriptor: Descriptor
    public let name: String
    public let type: bpf_prog_type
    /// The kernel's id for this program (as `bpftool prog show` lists it).
    public let id: UInt32

    init(descriptor: Descriptor) throws(BPFError) {
        self.descriptor = descriptor
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        try libbpfCall("bpf_obj_get_info_by_fd(program)") { bpf_obj_get_info_by_fd(descriptor.rawValue, &info, &length) }
        name = withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        type = bpf_prog_type(info.type)
        id = info.id
    }

    /// Opens a program pinned in bpffs.
    public static func open(pinned path: String) throws(BPFError) -> BPFProgram {
        let fd = try libbpfCall("bpf_obj_get(\(path))") { bpf_obj_get(path) }
        return try BPFProgram(descriptor: Descriptor(taking: fd))
    }

    /// Pins the program at `path`, so it outlives this process.
    public func pin(at path: String) throws(BPFError) {
        try libbpfCall("bpf_obj_pin(\(path))") { bpf_obj_pin(descriptor.rawValue, path) }
    }

    /// The raw descriptor, valid while this program is alive.
    public var fileDescriptor: CInt { descriptor.rawValue }
}
