import CLibBPF
import StraitSystem

/// Where an XDP program runs on an interface.
public enum XDPMode: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// In the driver, on the receive ring, before any socket buffer exists (`XDP_FLAGS_DRV_MODE`).
    /// Only drivers with XDP support accept it (veth, virtio_net, mlx5, i40e, ice, ixgbe, bnxt, ena…).
    case native
    /// After the kernel has built the socket buffer, on any interface (`XDP_FLAGS_SKB_MODE`). Same
    /// program and verdicts, a fraction of native speed: it saves the stack above, not the allocation.
    case generic

    var flags: UInt32 {
        switch self {
        case .native: UInt32(XDP_FLAGS_DRV_MODE)
        case .generic: UInt32(XDP_FLAGS_SKB_MODE)
        }
    }

    /// The mode's name, as configuration and `strait drop` output write it.
    public var description: String { rawValue }
}

/// What is attached at the XDP hook of one interface, as the kernel reports it (`bpf_xdp_query`).
public struct XDPAttachment: Sendable, Equatable {
    /// The program's id (as `bpftool prog show` lists it), 0 when nothing is attached.
    public var programID: UInt32
    /// How it is attached, nil when nothing is.
    public var mode: XDPMode?
    /// True when attached in hardware offload mode (never by Strait).
    public var offloaded: Bool

    /// Asks the kernel what runs at the XDP hook of the interface with index `ifindex` in the calling
    /// thread's network namespace. One netlink round trip; changes nothing.
    public static func query(ifindex: UInt32) throws(BPFError) -> XDPAttachment {
        let options = try withLibBPFOptions(bpf_xdp_query_opts.self) { options throws(BPFError) in
            try libbpfCall("bpf_xdp_query(ifindex \(ifindex))") { bpf_xdp_query(CInt(ifindex), 0, options) }
            return options.pointee
        }
        let mode: XDPMode? =
            switch UInt32(options.attach_mode) {
            case UInt32(XDP_ATTACHED_DRV): .native
            case UInt32(XDP_ATTACHED_SKB): .generic
            case UInt32(XDP_ATTACHED_MULTI): options.drv_prog_id != 0 ? .native : .generic
            default: nil
            }
        return XDPAttachment(
            programID: options.prog_id != 0 ? options.prog_id : (options.drv_prog_id != 0 ? options.drv_prog_id : options.skb_prog_id),
            mode: mode, offloaded: UInt32(options.attach_mode) == UInt32(XDP_ATTACHED_HW))
    }
}

extension BPFProgram {
    /// Attaches an XDP program to the interface with index `ifindex` (in the calling thread's network
    /// namespace) through a BPF link (`bpf_link_create` with `BPF_XDP`, kernel 5.9 and later).
    ///
    /// The link owns the attachment: closing its last descriptor detaches the program, so a crashed
    /// process leaves nothing behind unless the link was pinned. The kernel refuses (EBUSY) when
    /// another program is attached to the interface already, by link or by netlink; one XDP
    /// program per interface and mode. ``XDPMode/native`` fails with EOPNOTSUPP on drivers without
    /// XDP support: fall back to ``XDPMode/generic`` explicitly, never silently.
    public func attachXDP(ifindex: UInt32, mode: XDPMode) throws(BPFError) -> BPFLink {
        let fd = withLibBPFOptions(bpf_link_create_opts.self) { options in
            options.pointee.flags = mode.flags
            return bpf_link_create(descriptor.rawValue, CInt(ifindex), BPF_XDP, options)
        }
        let summary = "\(name) → XDP (\(mode)) on ifindex \(ifindex)"
        guard fd >= 0 else { throw .call("bpf_link_create(\(summary))", .init(rawValue: -fd)) }
        return BPFLink(descriptor: Descriptor(taking: fd), summary: summary)
    }

    /// Attaches to the interface named `interface` in the calling thread's network namespace.
    public func attachXDP(interface: String, mode: XDPMode) throws(BPFError) -> BPFLink {
        let index: UInt32
        do { index = try NetworkInterface(named: interface).index } catch { throw BPFError(error) }
        return try attachXDP(ifindex: index, mode: mode)
    }

    /// Loads a two-instruction XDP program that passes every packet (`r0 = XDP_PASS; exit`), for
    /// probing what an interface supports without loading an object file. Costs one verifier run.
    public static func loadXDPPass(name: String = "strait_xdp_pass") throws(BPFError) -> BPFProgram {
        var instructions = [bpf_insn(), bpf_insn()]
        instructions[0].code = UInt8(BPF_ALU64 | BPF_MOV | BPF_K)
        instructions[0].dst_reg = 0
        instructions[0].imm = Int32(XDP_PASS.rawValue)
        instructions[1].code = UInt8(BPF_JMP | BPF_EXIT)
        let fd = bpf_prog_load(BPF_PROG_TYPE_XDP, name, "GPL", instructions, instructions.count, nil)
        guard fd >= 0 else { throw .call("bpf_prog_load(\(name))", .init(rawValue: -fd)) }
        return try BPFProgram(descriptor: Descriptor(taking: fd), name: name)
    }
}

extension BPFLink {
    /// For an XDP link, the index of the interface it is attached to; nil for other links or when
    /// the interface has gone (the link is then defunct).
    public func xdpInterfaceIndex() throws(BPFError) -> UInt32? {
        guard let info = try info(), info.type == BPF_LINK_TYPE_XDP.rawValue, info.xdp.ifindex != 0 else { return nil }
        return info.xdp.ifindex
    }
}

/// Which XDP modes an interface accepts, found by attaching a pass-everything program for an instant.
public enum XDPProbe {
    /// Attaches ``BPFProgram/loadXDPPass(name:)`` natively, then generically, detaching at once each
    /// time; returns the modes the kernel accepted. While attached the program passes every packet,
    /// but attaching may reset the driver's rings on some NICs (a link flap of milliseconds): probe
    /// only interfaces where that is acceptable. An interface that already has an XDP program answers
    /// EBUSY, reported as a thrown error.
    public static func supportedModes(ifindex: UInt32) throws(BPFError) -> [XDPMode] {
        let program = try BPFProgram.loadXDPPass(name: "strait_probe")
        var modes: [XDPMode] = []
        for mode in XDPMode.allCases {
            do {
                let link = try program.attachXDP(ifindex: ifindex, mode: mode)
                try link.close()
                modes.append(mode)
            } catch let error where error.errno == .notSupported || error.errno == .invalidArgument {
                continue
            }
        }
        return modes
    }
}

extension BPFProgram {
    /// Loads a four-instruction XDP program that sends every frame out of interface `ifindex`
    /// (`bpf_redirect`), resolved in the network namespace of whoever runs it. With
    /// ``runLive(frame:repetitions:batchSize:)`` it is a packet generator. Costs one verifier run.
    public static func loadXDPRedirect(toIfindex ifindex: UInt32, name: String = "strait_redirect") throws(BPFError) -> BPFProgram {
        var instructions = [bpf_insn](repeating: bpf_insn(), count: 4)
        instructions[0].code = UInt8(BPF_ALU64 | BPF_MOV | BPF_K)
        instructions[0].dst_reg = 1
        instructions[0].imm = Int32(bitPattern: ifindex)
        instructions[1].code = UInt8(BPF_ALU64 | BPF_MOV | BPF_K)
        instructions[1].dst_reg = 2
        instructions[1].imm = 0
        instructions[2].code = UInt8(BPF_JMP | BPF_CALL)
        instructions[2].imm = Int32(BPF_FUNC_redirect.rawValue)
        instructions[3].code = UInt8(BPF_JMP | BPF_EXIT)
        let fd = bpf_prog_load(BPF_PROG_TYPE_XDP, name, "GPL", instructions, instructions.count, nil)
        guard fd >= 0 else { throw .call("bpf_prog_load(\(name))", .init(rawValue: -fd)) }
        return try BPFProgram(descriptor: Descriptor(taking: fd), name: name)
    }

    /// Runs an XDP program on `repetitions` copies of `frame` as live frames
    /// (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18+): what the program
    /// redirects is really transmitted, `batchSize` frames per flush, in the calling thread's network
    /// namespace. The call blocks until done (a signal ends it early). Returns mean ns per frame.
    @discardableResult
    public func runLive(frame: [UInt8], repetitions: UInt32, batchSize: UInt32 = 64) throws(BPFError) -> UInt32 {
        let (result, duration) = withLibBPFOptions(bpf_test_run_opts.self) { options in
            options.pointee.repeat = Int32(clamping: repetitions)
            options.pointee.flags = UInt32(BPF_F_TEST_XDP_LIVE_FRAMES)
            options.pointee.batch_size = batchSize
            let result = frame.withUnsafeBytes { bytes in
                options.pointee.data_in = bytes.baseAddress
                options.pointee.data_size_in = UInt32(bytes.count)
                return bpf_prog_test_run_opts(descriptor.rawValue, options)
            }
            return (result, options.pointee.duration)
        }
        if result < 0 { throw .call("bpf_prog_test_run(\(name), live frames)", .init(rawValue: -result)) }
        return duration
    }
}
