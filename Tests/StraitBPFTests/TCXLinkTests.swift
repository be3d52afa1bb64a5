import CLibBPF
import Foundation
import StraitBPF
import StraitSystem
import StraitTestSupport
import Testing

/// A two-instruction `tc` program that returns `TC_ACT_UNSPEC` (tcx's "next"): it changes no packet.
func loadTCNext() throws -> BPFProgram {
    var instructions = [bpf_insn(), bpf_insn()]
    instructions[0].code = UInt8(BPF_ALU64 | BPF_MOV | BPF_K)
    instructions[0].imm = -1
    instructions[1].code = UInt8(BPF_JMP | BPF_EXIT)
    let fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "strait_tc_next", "GPL", instructions, instructions.count, nil)
    try #require(fd >= 0, "bpf_prog_load(sched_cls) failed with errno \(-fd)")
    return try BPFProgram.adopt(descriptor: fd, name: "strait_tc_next")
}

@Suite("StraitBPF: tcx links", .serialized, kernelGate)
struct TCXLinkTests {
    @Test("a tcx egress link attaches to a veth without a qdisc, reports its ifindex, and detaches when closed")
    func egressLink() throws {
        try VethNamespace.with { lab in
            try lab.namespace.run {
                let index = try NetworkInterface(named: lab.interface).index
                let program = try loadTCNext()
                let link = try program.attachTCX(interface: lab.interface, direction: .egress)
                #expect(!link.isLegacy)
                #expect(try link.tcxInterfaceIndex() == index)
                #expect(try attachedTCXProgramIDs(ifindex: index, direction: .egress) == [program.id])
                #expect(try attachedTCXProgramIDs(ifindex: index, direction: .ingress).isEmpty)
                #expect(throws: BPFError.self, "the same program twice on one hook is refused") { _ = try program.attachTCX(ifindex: index, direction: .egress) }
                let second = try loadTCNext().attachTCX(ifindex: index, direction: .egress)
                #expect(try attachedTCXProgramIDs(ifindex: index, direction: .egress).count == 2, "tcx hooks hold several programs")
                try second.close()
                try link.close()
                #expect(try attachedTCXProgramIDs(ifindex: index, direction: .egress).isEmpty)
            }
        }
    }

    @Test("a pinned tcx link outlives its descriptor until detached")
    func pinned() throws {
        try VethNamespace.with { lab in
            try TestCgroup.with { fixture in
                let pin = fixture.pinDirectory + "/tcx_link"
                try lab.namespace.run {
                    let index = try NetworkInterface(named: lab.interface).index
                    let link = try loadTCNext().attachTCX(ifindex: index, direction: .ingress)
                    try link.pin(at: pin)
                    try link.close()
                    #expect(try attachedTCXProgramIDs(ifindex: index, direction: .ingress).count == 1, "the pin keeps it attached")
                    try BPFLink.open(pinned: pin).detach()
                    try BPFFS.unpin(pin)
                    #expect(try attachedTCXProgramIDs(ifindex: index, direction: .ingress).isEmpty)
                }
            }
        }
    }
}
