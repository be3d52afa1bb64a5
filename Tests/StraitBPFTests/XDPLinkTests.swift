import CLibBPF
import Foundation
@testable import StraitBPF
import StraitSystem
import StraitTestSupport
import Testing

/// A network namespace holding one veth pair, both ends up, removed with everything in it.
struct VethNamespace {
    let namespace: NetworkNamespace
    let interface: String

    static func with<T>(_ body: (VethNamespace) throws -> T) throws -> T {
        _ = LeftoverSweep.once
        let namespace = try NetworkNamespace.create(uniqueTestName("strait-ns"))
        defer { namespace.delete() }
        let name = "sdrx\(getpid() % 10000)\(Int.random(in: 0..<100))"
        try NetworkNamespace.runIP(["-n", namespace.name, "link", "add", name + "a", "type", "veth", "peer", "name", name + "b"])
        try NetworkNamespace.runIP(["-n", namespace.name, "link", "set", name + "a", "up"])
        try NetworkNamespace.runIP(["-n", namespace.name, "link", "set", name + "b", "up"])
        return try body(VethNamespace(namespace: namespace, interface: name + "a"))
    }
}

@Suite("StraitBPF: XDP links", .serialized, kernelGate)
struct XDPLinkTests {
    @Test("an XDP link attaches natively to a veth, reports its mode and ifindex, and detaches when closed")
    func nativeLink() throws {
        try VethNamespace.with { lab in
            try lab.namespace.run {
                let index = try NetworkInterface(named: lab.interface).index
                let program = try fixtures().program("count_and_publish")
                let link = try program.attachXDP(ifindex: index, mode: .native)
                #expect(!link.isLegacy)
                #expect(try link.xdpInterfaceIndex() == index)
                let attached = try XDPAttachment.query(ifindex: index)
                #expect(attached.programID == program.id && attached.mode == .native)
                #expect(throws: BPFError.self, "a second program on the same hook is refused") {
                    _ = try BPFProgram.loadXDPPass().attachXDP(ifindex: index, mode: .native)
                }
                try link.close()
                let after = try XDPAttachment.query(ifindex: index)
                #expect(after.programID == 0 && after.mode == nil)
            }
        }
    }

    @Test("generic mode attaches by name; a pinned XDP link outlives its descriptor until detached")
    func genericPinned() throws {
        try VethNamespace.with { lab in
            try TestCgroup.with { fixture in
                let pin = fixture.pinDirectory + "/xdp_link"
                try lab.namespace.run {
                    let program = try BPFProgram.loadXDPPass()
                    let link = try program.attachXDP(interface: lab.interface, mode: .generic)
                    try link.pin(at: pin)
                    try link.close()
                    let index = try NetworkInterface(named: lab.interface).index
                    #expect(try XDPAttachment.query(ifindex: index).mode == .generic, "the pin keeps it attached")
                    try BPFLink.open(pinned: pin).detach()
                    try BPFFS.unpin(pin)
                    #expect(try XDPAttachment.query(ifindex: index).programID == 0)
                }
            }
        }
    }

    @Test("the probe finds both modes on a veth and leaves nothing attached")
    func probe() throws {
        try VethNamespace.with { lab in
            try lab.namespace.run {
                let index = try NetworkInterface(named: lab.interface).index
                #expect(try XDPProbe.supportedModes(ifindex: index) == [.native, .generic])
                #expect(try XDPAttachment.query(ifindex: index).programID == 0)
            }
        }
    }

    @Test("a redirect program run on live frames transmits them: they arrive at the veth peer's XDP hook")
    func liveFrames() throws {
        try VethNamespace.with { lab in
            let peer = String(lab.interface.dropLast()) + "b"
            let object = try fixtures()
            let program = try object.program("count_and_publish")
            // The counting program publishes each frame's length; 77 bytes marks ours (the
            // interfaces send neighbour discovery of their own meanwhile).
            var ours = 0
            let reader = try RingBufferReader(map: try object.map("records")) { record in
                if record.loadUnaligned(as: UInt32.self) == 77 { ours += 1 }
                return true
            }
            try lab.namespace.run {
                let counting = try program.attachXDP(interface: lab.interface, mode: .native)
                defer { try? counting.close() }
                let generator = try BPFProgram.loadXDPRedirect(toIfindex: try NetworkInterface(named: peer).index)
                let frame = [UInt8](repeating: 0xff, count: 12) + [0x88, 0xb5] + [UInt8](repeating: 0, count: 63)
                try generator.runLive(frame: frame, repetitions: 100)
            }
            try reader.drain()
            #expect(ours == 100)
        }
    }

    @Test("a missing interface is an error naming it")
    func missingInterface() throws {
        let error = bpfError { _ = try BPFProgram.loadXDPPass().attachXDP(interface: "sdr-none", mode: .generic) }
        #expect(error?.errno?.rawValue == ENODEV)
        #expect(error?.description.contains("sdr-none") == true)
    }
}

@Suite("libbpf options structs")
struct LibBPFOptionsTests {
    @Test("every byte is zero but `sz`, which is the C sizeof; libbpf accepts the struct (no `non-zero extra bytes`)")
    func zeroedOptions() throws {
        // Dirty the heap first, so a struct built on reused memory would show it.
        for _ in 0..<16 { _ = [UInt8](repeating: 0xFF, count: 64).withUnsafeBytes { Array($0) } }
        let bytes = withLibBPFOptions(bpf_xdp_query_opts.self) { options in
            Array(UnsafeRawBufferPointer(start: options, count: MemoryLayout<bpf_xdp_query_opts>.stride))
        }
        #expect(bytes.count == 32, "sizeof(struct bpf_xdp_query_opts) in libbpf 1.1's header")
        #expect(bytes.prefix(8) == ArraySlice(withUnsafeBytes(of: 32) { Array($0) }))
        #expect(bytes.dropFirst(8).allSatisfy { $0 == 0 })
    }

    @Test("bpf_xdp_query answers for loopback", kernelGate)
    func queryLoopback() throws {
        let attachment = try XDPAttachment.query(ifindex: 1)
        #expect(attachment.mode == nil || attachment.programID != 0)
    }
}

@Suite("ENOMEM advice follows the kernel's memory accounting")
struct MemoryAdviceTests {
    @Test("from 5.11 BPF memory is charged to the memory cgroup: the advice says so, and not RLIMIT_MEMLOCK")
    func advice() {
        #expect(KernelRelease(text: "6.1.0-18-amd64").isAtLeast(5, 11))
        #expect(KernelRelease(text: "5.11.0").isAtLeast(5, 11))
        #expect(!KernelRelease(text: "5.10.0-28-amd64").isAtLeast(5, 11))
        #expect(!KernelRelease(text: "4.19.0").isAtLeast(5, 11))
        #expect(KernelRelease(text: "6.18.0").version! == (6, 18))
        let message = BPFError.call("bpf_map_update_elem(rule_hits)", .noMemory).description
        if KernelRelease.current.isAtLeast(5, 11) {
            #expect(message.contains("memory cgroup") && message.contains("RLIMIT_MEMLOCK does not apply"), "\(message)")
        } else {
            #expect(message.contains("raise RLIMIT_MEMLOCK"), "\(message)")
        }
    }
}
