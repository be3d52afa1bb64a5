import CLibBPF
import StraitSystem
import SystemPackage

/// Which way through an interface a tcx program sees packets.
public enum TCXDirection: String, Sendable, Codable, CustomStringConvertible {
    /// Received packets, before the stack (`BPF_TCX_INGRESS`).
    case ingress
    /// Packets about to be queued to the interface's root qdisc (`BPF_TCX_EGRESS`): where an Earliest
    /// Departure Time program sets `skb->tstamp` for fq to honour.
    case egress

    /// The attach type. The installed uapi header predates tcx (kernel 6.6), so the values are
    /// spelled here: `BPF_TCX_INGRESS` = 46, `BPF_TCX_EGRESS` = 47 in `enum bpf_attach_type`.
    var attachType: bpf_attach_type {
        switch self {
        case .ingress: bpf_attach_type(rawValue: 46)
        case .egress: bpf_attach_type(rawValue: 47)
        }
    }

    /// The direction's name, as configuration and command output write it.
    public var description: String { rawValue }
}

extension BPFProgram {
    /// Attaches a `tc` (sched_cls) program to the interface with index `ifindex`, in the calling thread's
    /// network namespace, as a tcx link (`bpf_link_create` with `BPF_TCX_INGRESS`/`EGRESS`, kernel 6.6+).
    ///
    /// tcx needs no clsact qdisc and no netlink filter: the link owns the attachment, closing its
    /// last descriptor detaches the program, and a pinned link outlives the process. Several programs
    /// may share a hook; this one is appended after those already there, and returning
    /// `TC_ACT_UNSPEC` (tcx's "next") lets the rest run. A kernel without tcx answers EINVAL.
    public func attachTCX(ifindex: UInt32, direction: TCXDirection) throws(BPFError) -> BPFLink {
        let summary = "\(name) → tcx \(direction) on ifindex \(ifindex)"
        let fd = bpf_link_create(descriptor.rawValue, CInt(ifindex), direction.attachType, nil)
        guard fd >= 0 else {
            let code = Errno(rawValue: -fd)
            if code == .invalidArgument {
                throw .unsupported("bpf_link_create(\(summary)) failed with EINVAL: tcx links need Linux 6.6 or later, and a `tc` (sched_cls) program")
            }
            throw .call("bpf_link_create(\(summary))", code)
        }
        return BPFLink(descriptor: Descriptor(taking: fd), summary: summary)
    }

    /// Attaches to the interface named `interface` in the calling thread's network namespace.
    public func attachTCX(interface: String, direction: TCXDirection) throws(BPFError) -> BPFLink {
        let index: UInt32
        do { index = try NetworkInterface(named: interface).index } catch { throw BPFError(error) }
        return try attachTCX(ifindex: index, direction: direction)
    }
}

extension BPFLink {
    /// For a tcx link, the index of the interface it is attached to; nil for other links or when
    /// the interface has gone. (`BPF_LINK_TYPE_TCX` is 11; the installed header has no `tcx` member
    /// in `bpf_link_info`, but its union starts with the ifindex as the `xdp` member's does.)
    public func tcxInterfaceIndex() throws(BPFError) -> UInt32? {
        guard let info = try info(), info.type == 11, info.xdp.ifindex != 0 else { return nil }
        return info.xdp.ifindex
    }
}

/// Ids of the programs attached to the tcx hook of interface `ifindex` in `direction`, in run order
/// (`BPF_PROG_QUERY` on the ifindex). One syscall.
public func attachedTCXProgramIDs(ifindex: UInt32, direction: TCXDirection) throws(BPFError) -> [UInt32] {
    try attachedProgramIDs(target: CInt(ifindex), type: direction.attachType)
}
