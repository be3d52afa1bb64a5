import CLibBPF
import SystemPackage

/// An attachment of a program to a hook. Closing it detaches the program.
///
/// Most attachments are kernel BPF links: they go away with their last descriptor, so a crashed
/// process leaves nothing attached, unless the link was pinned (``pin(at:)``) to outlive it.
/// Where the kernel has no link for a hook, the attachment is a legacy one (`bpf_prog_attach`) that
/// persists until ``close()`` detaches it explicitly: ``isLegacy`` says which.
public final class BPFLink: @unchecked Sendable {
    private let descriptor: Descriptor?
    private var legacyDetach: (() throws(BPFError) -> Void)?
    /// What the link attaches, for messages: e.g. `sock_ops → cgroup /sys/fs/cgroup/unified/x`.
    public let summary: String

    init(descriptor: Descriptor, summary: String) {
        self.descriptor = descriptor
        self.summary = summary
    }

    init(legacySummary summary: String, detach: @escaping () throws(BPFError) -> Void) {
        self.descriptor = nil
        self.legacyDetach = detach
        self.summary = summary
    }

    deinit { try? close() }

    /// Whether this is a legacy attachment (no kernel link): it outlives the process unless closed.
    public var isLegacy: Bool { descriptor == nil }

    /// Opens a link pinned in bpffs. Closing the returned value does not detach while the pin stays.
    public static func open(pinned path: String) throws(BPFError) -> BPFLink {
        let fd = try libbpfCall("bpf_obj_get(\(path))") { bpf_obj_get(path) }
        return BPFLink(descriptor: Descriptor(taking: fd), summary: "pinned link \(path)")
    }

    /// Pins the link so the attachment outlives this process; removing the pin (and closing every
    /// descriptor) detaches it.
    public func pin(at path: String) throws(BPFError) {
        guard let descriptor else {
            throw .unsupported("\(summary) is a legacy attachment (no BPF link on this kernel) and cannot be pinned; it stays attached until detached.")
        }
        try libbpfCall("bpf_obj_pin(\(path))") { bpf_obj_pin(descriptor.rawValue, path) }
    }

    /// The kernel's description of the link (type, program id, target), or nil for a legacy attachment.
    public func info() throws(BPFError) -> bpf_link_info? {
        guard let descriptor else { return nil }
        var info = bpf_link_info()
        var length = UInt32(MemoryLayout<bpf_link_info>.size)
        try libbpfCall("bpf_obj_get_info_by_fd(link)") { bpf_obj_get_info_by_fd(descriptor.rawValue, &info, &length) }
        return info
    }

    /// Detaches at once, even while other descriptors or pins refer to the link (`BPF_LINK_DETACH`).
    public func detach() throws(BPFError) {
        if let descriptor {
            try libbpfCall("bpf_link_detach(\(summary))") { bpf_link_detach(descriptor.rawValue) }
        } else {
            try close()
        }
    }

    /// Closes this reference. For a kernel link the program stays attached while a pin or another
    /// descriptor refers to it; a legacy attachment is detached here.
    public func close() throws(BPFError) {
        descriptor?.close()
        if let legacyDetach {
            self.legacyDetach = nil
            try legacyDetach()
        }
    }

    /// Creates a kernel link, or, where the kernel has none for this hook (EINVAL from link_create
    /// on kernels before sockmap/XDP links), a legacy attachment detached on close.
    static func create(
        program: BPFProgram, target: CInt, attachType: bpf_attach_type, summary: String, legacyAllowed: Bool
    ) throws(BPFError) -> BPFLink {
        let fd = bpf_link_create(program.descriptor.rawValue, target, attachType, nil)
        if fd >= 0 { return BPFLink(descriptor: Descriptor(taking: fd), summary: summary) }
        let code = Errno(rawValue: -fd)
        guard legacyAllowed, code == .invalidArgument || code == .notSupported else {
            throw .call("bpf_link_create(\(summary))", code)
        }
        let programFD = try Descriptor.duplicate(program.descriptor.rawValue, "dup(program)")
        let targetFD = try Descriptor.duplicate(target, "dup(attach target)")
        try libbpfCall("bpf_prog_attach(\(summary))") { bpf_prog_attach(programFD.rawValue, targetFD.rawValue, attachType, 0) }
        return BPFLink(legacySummary: summary + " (legacy)") { () throws(BPFError) in
            try libbpfCall("bpf_prog_detach2(\(summary))") { bpf_prog_detach2(programFD.rawValue, targetFD.rawValue, attachType) }
        }
    }
}

/// Ids of the programs attached to a hook (`BPF_PROG_QUERY`): a cgroup directory or a socket map's
/// descriptor, for one attach type. One syscall.
public func attachedProgramIDs(target fd: CInt, type: bpf_attach_type) throws(BPFError) -> [UInt32] {
    var ids = [UInt32](repeating: 0, count: 64)
    var count = UInt32(ids.count)
    var flags: UInt32 = 0
    try libbpfCall("bpf_prog_query") { bpf_prog_query(fd, type, 0, &flags, &ids, &count) }
    return Array(ids[0..<Int(count)])
}
