import CLibBPF
import Foundation
import StraitBPF
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

struct Pair: Equatable {
    var left: UInt32
    var right: UInt32
}

/// The BPFError `body` throws, or nil if it returns.
func bpfError(_ body: () throws -> Void) -> BPFError? {
    do {
        try body()
        return nil
    } catch {
        return error as? BPFError
    }
}

func fixtures() throws -> BPFObject {
    try BPFObjectSpec(embedded: .fixtures).load()
}

@Suite("StraitBPF: objects, maps, programs", kernelGate)
struct BPFObjectTests {
    @Test("a spec lists programs and maps before anything reaches the kernel")
    func specListsContents() throws {
        let spec = try BPFObjectSpec(embedded: .fixtures)
        #expect(spec.programNames == ["count_and_publish", "observe_sockops", "pass_messages", "parse_whole", "pass_stream"])
        #expect(Set(spec.mapNames).isSuperset(of: ["pairs", "runs", "records", "sockets"]))
        try spec.setMaxEntries(64, forMap: "pairs")
        let object = try spec.load()
        #expect(try object.map("pairs").maxEntries == 64)
        #expect(throws: BPFError.self) { try spec.load() }
    }

    @Test("an object opened from a file lists what the same bytes opened from memory list, internal map names included")
    func fileAndMemoryAgree() throws {
        // The same file name, so that libbpf names the internal maps (`fixture.rodata`…) alike.
        let folder = FileManager.default.temporaryDirectory.appending(path: uniqueTestName("bpf-object")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/fixtures.bpf.o"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(EmbeddedBPFObject.fixtures.bytes)))
        let fromFile = try BPFObjectSpec(path: path)
        let fromMemory = try BPFObjectSpec(embedded: .fixtures)
        #expect(fromMemory.programNames == fromFile.programNames)
        #expect(fromMemory.mapNames == fromFile.mapNames)
        #expect(try fromMemory.load().map("pairs").maxEntries > 0)
        // Bytes that are no BPF object fail at open or at load, with a BPFError, never a crash.
        #expect(throws: BPFError.self) { _ = try BPFObjectSpec(bytes: [0x7f, 0x45, 0x4c, 0x46, 0, 0], name: "truncated").load() }
        #expect(throws: BPFError.self) { _ = try BPFObjectSpec(bytes: Array(EmbeddedBPFObject.fixtures.bytes.prefix(200)), name: "cut").load() }
    }

    @Test("typed maps: update, lookup, delete, iterate")
    func typedMap() throws {
        let pairs = try fixtures().map("pairs").typed(key: UInt32.self, value: Pair.self)
        #expect(pairs.map.type == BPF_MAP_TYPE_HASH && pairs.map.keySize == 4 && pairs.map.valueSize == 8)
        for key in UInt32(1)...5 { try pairs.update(key, Pair(left: key, right: key * 10)) }
        #expect(try pairs.lookup(3) == Pair(left: 3, right: 30))
        #expect(try pairs.lookup(99) == nil)
        #expect(try pairs.delete(3))
        #expect(try !pairs.delete(3))
        #expect(try Set(pairs.keys()) == [1, 2, 4, 5])
        #expect(throws: BPFError.self) { try pairs.update(1, Pair(left: 0, right: 0), flags: .noExist) }
        #expect(throws: BPFError.self) { try pairs.update(42, Pair(left: 0, right: 0), flags: .exist) }
    }

    @Test("a Swift type of the wrong size is refused at binding, naming both sizes")
    func layoutMismatch() throws {
        let map = try fixtures().map("pairs")
        let error = bpfError { _ = try map.typed(key: UInt32.self, value: UInt32.self) }
        guard case .layoutMismatch(let name, let part, let swiftSize, let kernelSize) = error else {
            Issue.record("expected layoutMismatch, got \(String(describing: error))")
            return
        }
        #expect(name == "pairs" && part == "value" && swiftSize == 4 && kernelSize == 8)
        #expect(bpfError { _ = try map.typed(key: UInt16.self, value: Pair.self) } != nil)
    }

    @Test("a program the verifier rejects throws its errno and the whole verifier log")
    func verifierRejection() throws {
        let spec = try BPFObjectSpec(embedded: .rejected)
        let error = bpfError { _ = try spec.load() }
        guard case .verifierRejected(let program, let errno, let log) = error else {
            Issue.record("expected verifierRejected, got \(String(describing: error))")
            return
        }
        #expect(program == "unchecked_packet_read")
        #expect(errno == .permissionDenied)
        #expect(log.contains("invalid access to packet"), "the log explains the rejection: \(log.suffix(300))")
        #expect(error?.description.contains("verifier rejected program 'unchecked_packet_read'") == true)
    }

    @Test("asking for a program that is not there names the ones that are")
    func missingProgram() throws {
        #expect(throws: BPFError.self) { try fixtures().program("no_such_program") }
    }

    @Test("test runs, per-CPU values and the ring buffer")
    func testRunAndRingBuffer() throws {
        let object = try fixtures()
        let program = try object.program("count_and_publish")
        let runs = try object.map("runs").typed(key: UInt32.self, value: UInt64.self)
        nonisolated(unsafe) var lengths: [UInt32] = []
        let reader = try RingBufferReader(map: try object.map("records")) { bytes in
            lengths.append(bytes.loadUnaligned(as: UInt32.self))
            return true
        }
        for size in [60, 100, 1500] {
            let result = try program.testRun(input: [UInt8](repeating: 0xab, count: size))
            #expect(result.returnValue == XDP_PASS.rawValue)
        }
        try reader.drain()
        #expect(lengths == [60, 100, 1500])
        let perCPU = try runs.perCPUValues(0)
        #expect(perCPU.count == BPFMap.possibleCPUs)
        #expect(perCPU.reduce(0, +) == 3)
        try runs.updatePerCPU(0, 0)
        #expect(try runs.perCPUValues(0).reduce(0, +) == 0)
    }

    @Test("pinned maps and programs outlive their descriptors and reopen")
    func pinning() throws {
        try TestCgroup.with { fixture in
            let object = try fixtures()
            let pairs = try object.map("pairs").typed(key: UInt32.self, value: Pair.self)
            try pairs.update(7, Pair(left: 1, right: 2))
            try pairs.map.pin(at: fixture.pinDirectory + "/pairs")
            try object.program("count_and_publish").pin(at: fixture.pinDirectory + "/program")
            let mapID = pairs.map.id
            object.close()

            let reopened = try BPFMap.open(pinned: fixture.pinDirectory + "/pairs").typed(key: UInt32.self, value: Pair.self)
            #expect(reopened.map.id == mapID)
            #expect(try reopened.lookup(7) == Pair(left: 1, right: 2))
            let program = try BPFProgram.open(pinned: fixture.pinDirectory + "/program")
            #expect(program.name == "count_and_publi", "the kernel keeps 15 characters of a name")
            try BPFFS.unpin(fixture.pinDirectory + "/pairs")
            #expect(!BPFFS.exists(fixture.pinDirectory + "/pairs"))
            #expect(throws: BPFError.self) { try BPFMap.open(pinned: fixture.pinDirectory + "/pairs") }
        }
    }
}

@Suite("StraitBPF: links detach when closed", .serialized, kernelGate)
struct BPFLinkTests {
    @Test("a cgroup link is attached while open and gone once closed")
    func cgroupLink() throws {
        try TestCgroup.with { fixture in
            let program = try fixtures().program("observe_sockops")
            let link = try program.attach(cgroup: fixture.cgroup)
            #expect(!link.isLegacy)
            #expect(try fixture.cgroup.attachedProgramIDs() == [program.id])
            #expect(try link.cgroupID() != nil)
            let cgroupID = try #require(try link.cgroupID())
            #expect(Cgroup.find(id: cgroupID)?.path == fixture.cgroup.path)
            try link.close()
            #expect(try fixture.cgroup.attachedProgramIDs().isEmpty)
        }
    }

    @Test("a pinned link survives its descriptor; detach removes it at once")
    func pinnedLink() throws {
        try TestCgroup.with { fixture in
            let program = try fixtures().program("observe_sockops")
            let link = try program.attach(cgroup: fixture.cgroup)
            try link.pin(at: fixture.pinDirectory + "/link")
            try link.close()
            #expect(try fixture.cgroup.attachedProgramIDs() == [program.id], "the pin keeps it attached")
            try BPFLink.open(pinned: fixture.pinDirectory + "/link").detach()
            #expect(try fixture.cgroup.attachedProgramIDs().isEmpty)
        }
    }

    @Test("an sk_msg program attaches to a socket hash through a link")
    func sockmapLink() throws {
        let object = try fixtures()
        let program = try object.program("pass_messages")
        let sockets = try object.map("sockets")
        let link = try program.attach(sockmap: sockets, as: .messageVerdict)
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_MSG_VERDICT) == [program.id])
        try link.close()
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_MSG_VERDICT).isEmpty)
    }

    @Test("sk_skb stream parser and verdict attach to a socket hash through links")
    func streamLinks() throws {
        let object = try fixtures()
        let sockets = try object.map("sockets")
        let parser = try object.program("parse_whole")
        let verdict = try object.program("pass_stream")
        let parserLink = try parser.attach(sockmap: sockets, as: .streamParser)
        let verdictLink = try verdict.attach(sockmap: sockets, as: .streamVerdict)
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_SKB_STREAM_PARSER) == [parser.id])
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_SKB_STREAM_VERDICT) == [verdict.id])
        try verdictLink.close()
        try parserLink.close()
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_SKB_STREAM_VERDICT).isEmpty)
        #expect(try attachedProgramIDs(target: sockets.fileDescriptor, type: BPF_SK_SKB_STREAM_PARSER).isEmpty)
    }
}

