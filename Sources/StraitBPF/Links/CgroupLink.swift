import CLibBPF
import StraitSystem

extension BPFProgram {
    /// Attaches a cgroup program (`sock_ops`, …) to a cgroup v2 with a BPF link: it runs for sockets
    /// created by processes in that cgroup or below it. Attach only to a cgroup you own; the link
    /// detaches when closed unless pinned.
    public func attach(cgroup: Cgroup, as attachType: bpf_attach_type = BPF_CGROUP_SOCK_OPS) throws(BPFError) -> BPFLink {
        let fd: CInt
        do { fd = try cgroup.openDirectory() } catch { throw BPFError(error) }
        defer { closeDescriptor(fd) }
        return try BPFLink.create(
            program: self, target: fd, attachType: attachType,
            summary: "\(name) → cgroup \(cgroup.path)", legacyAllowed: false)
    }
}

extension BPFLink {
    /// For a cgroup link, the id of the cgroup it is attached to (the cgroup directory's inode number).
    public func cgroupID() throws(BPFError) -> UInt64? {
        guard let info = try info(), info.type == BPF_LINK_TYPE_CGROUP.rawValue else { return nil }
        return info.cgroup.cgroup_id
    }
}

extension Cgroup {
    /// Ids of the programs attached to this cgroup for `type` (default `sock_ops`).
    public func attachedProgramIDs(type: bpf_attach_type = BPF_CGROUP_SOCK_OPS) throws(BPFError) -> [UInt32] {
        let fd: CInt
        do { fd = try openDirectory() } catch { throw BPFError(error) }
        defer { closeDescriptor(fd) }
        return try StraitBPF.attachedProgramIDs(target: fd, type: type)
    }
}
