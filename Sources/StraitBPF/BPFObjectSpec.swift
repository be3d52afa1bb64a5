import CLibBPF
import Foundation
import SystemPackage

/// A BPF ELF object compiled into the binary: the BPFCompiler plugin turns each target's
/// `bpf/NAME.bpf.c` into a static `EmbeddedBPFObject.NAME` of that target (internal to it), the way
/// bpftool's skeletons and cilium/ebpf's bpf2go embed theirs. A binary that carries its objects
/// runs from wherever it is installed.
///
/// The bytes are decoded from the generated base64 text once, on first use of the static (a copy
/// of the object's size, tens of kilobytes, kept for the life of the process).
public struct EmbeddedBPFObject: Sendable {
    /// The object's name without `.o` (`accel.bpf`): libbpf's object name, which prefixes the names
    /// of its internal `.rodata`/`.bss` maps exactly as opening the file would.
    public let name: String
    /// The ELF object.
    public let bytes: [UInt8]

    /// Decodes an object the plugin embedded. A text that is not base64 is a broken build, not a
    /// runtime condition, so it stops the process with the object's name.
    public init(name: String, base64: String) {
        guard let data = Data(base64Encoded: base64) else { fatalError("the embedded BPF object \(name) is not base64: rebuild") }
        self.name = name
        self.bytes = [UInt8](data)
    }
}

/// A BPF ELF object not yet in the kernel: its programs and maps can be listed and adjusted (map
/// sizes, which programs load) before ``load()``.
///
/// A spec is used once: ``load()`` hands its libbpf object to the returned ``BPFObject``.
public final class BPFObjectSpec {
    private var object: OpaquePointer?
    /// The ELF bytes libbpf reads in place, for a spec opened from memory; it outlives `object`.
    private let image: ObjectImage?
    /// Where the object came from, for messages.
    public let source: String

    /// Opens the ELF file at `path`. Costs one file read and ELF parse; nothing reaches the kernel.
    public init(path: String) throws(BPFError) {
        _ = LibBPFLogging.install
        source = path
        image = nil
        object = try libbpfPointer("bpf_object__open_file(\(path))") { bpf_object__open_file(path, nil) }
    }

    /// Opens an ELF object held in memory (`bpf_object__open_mem`). `name` is libbpf's object name
    /// (the file name without `.o`, e.g. `accel.bpf`). The bytes are copied once into a buffer the
    /// spec owns, because libbpf parses the ELF in place until ``load()`` finishes.
    public init(bytes: [UInt8], name: String) throws(BPFError) {
        _ = LibBPFLogging.install
        source = "\(name).o (embedded)"
        let image = ObjectImage(bytes)
        self.image = image
        object = try libbpfPointer("bpf_object__open_mem(\(name))") {
            name.withCString { objectName in
                var options = bpf_object_open_opts()
                options.sz = MemoryLayout<bpf_object_open_opts>.size
                options.object_name = objectName
                return bpf_object__open_mem(image.buffer.baseAddress, image.buffer.count, &options)
            }
        }
    }

    /// Opens an object the BPFCompiler plugin embedded in the calling target:
    /// `BPFObjectSpec(embedded: .accel)` for `bpf/accel.bpf.c`.
    public convenience init(embedded object: EmbeddedBPFObject) throws(BPFError) {
        try self.init(bytes: object.bytes, name: object.name)
    }

    deinit {
        if let object { bpf_object__close(object) }
    }

    /// Names of the programs in the object, in ELF order.
    public var programNames: [String] {
        guard let object else { return [] }
        var names: [String] = []
        var program = bpf_object__next_program(object, nil)
        while let current = program {
            names.append(String(cString: bpf_program__name(current)))
            program = bpf_object__next_program(object, current)
        }
        return names
    }

    /// Names of the maps in the object (including libbpf's internal `.rodata`/`.bss` maps).
    public var mapNames: [String] {
        guard let object else { return [] }
        var names: [String] = []
        var map = bpf_object__next_map(object, nil)
        while let current = map {
            names.append(String(cString: bpf_map__name(current)))
            map = bpf_object__next_map(object, current)
        }
        return names
    }

    /// Changes a map's capacity before load.
    public func setMaxEntries(_ count: UInt32, forMap name: String) throws(BPFError) {
        guard let object, let map = bpf_object__find_map_by_name(object, name) else {
            throw .missing(kind: "map", name: name, available: mapNames)
        }
        try libbpfCall("bpf_map__set_max_entries(\(name))") { bpf_map__set_max_entries(map, count) }
    }

    /// Sets the attach type a program is verified for, before load. An `sk_reuseport` program loaded
    /// for `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` also chooses where connections queued on a closing
    /// listener go (with `net.ipv4.tcp_migrate_req=1`); the section name `sk_reuseport/migrate`
    /// sets the same thing.
    public func setExpectedAttachType(_ type: bpf_attach_type, forProgram name: String) throws(BPFError) {
        guard let object, let program = bpf_object__find_program_by_name(object, name) else {
            throw .missing(kind: "program", name: name, available: programNames)
        }
        try libbpfCall("bpf_program__set_expected_attach_type(\(name))") { bpf_program__set_expected_attach_type(program, type) }
    }

    /// Leaves a program out of ``load()`` (or puts it back): an object can carry variants of which
    /// the caller loads one.
    public func setAutoload(_ load: Bool, forProgram name: String) throws(BPFError) {
        guard let object, let program = bpf_object__find_program_by_name(object, name) else {
            throw .missing(kind: "program", name: name, available: programNames)
        }
        try libbpfCall("bpf_program__set_autoload(\(name))") { bpf_program__set_autoload(program, load) }
    }

    /// Loads every map and program into the kernel. A program the verifier rejects throws
    /// ``BPFError/verifierRejected(program:errno:log:)`` with the verifier's whole log.
    ///
    /// Costs the verifier's time for each program (milliseconds for Strait's programs) and a
    /// temporary log buffer per program that is freed on return.
    public func load() throws(BPFError) -> BPFObject {
        guard let object else { throw .unsupported("this BPF object spec (\(source)) was loaded already; open it again") }
        // libbpf asks for the verifier log only on failure (log level 0 first, then 1 on retry).
        let logSize = 4 << 20
        var logs: [(name: String, buffer: UnsafeMutablePointer<CChar>)] = []
        defer { logs.forEach { $0.buffer.deallocate() } }
        var program = bpf_object__next_program(object, nil)
        while let current = program {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: logSize)
            buffer[0] = 0
            bpf_program__set_log_buf(current, buffer, logSize)
            logs.append((String(cString: bpf_program__name(current)), buffer))
            program = bpf_object__next_program(object, current)
        }
        let result = bpf_object__load(object)
        if result < 0 {
            let code = Errno(rawValue: -result)
            if let failed = logs.first(where: { $0.buffer[0] != 0 }) {
                throw .verifierRejected(program: failed.name, errno: code, log: String(cString: failed.buffer))
            }
            throw .call("bpf_object__load(\(source))", code)
        }
        self.object = nil
        return BPFObject(object: object, image: image, source: source)
    }
}

/// A loaded BPF object: its maps and programs are in the kernel.
///
/// Maps and programs taken from it (``map(_:)``, ``program(_:)``) hold their own descriptors and
/// stay valid after the object is closed. Close the object (or drop it) when done: it owns the
/// kernel objects nobody took.
public final class BPFObject {
    private var object: OpaquePointer?
    /// Kept until ``close()``: libbpf's object may still point into an image it was opened from.
    private var image: ObjectImage?
    /// Where the object came from (a path, or an embedded object's name), for messages.
    public let source: String

    init(object: OpaquePointer, image: ObjectImage?, source: String) {
        self.object = object
        self.image = image
        self.source = source
    }

    deinit { close() }

    /// Releases libbpf's object and its descriptors. Maps, programs and links taken from it stay.
    public func close() {
        if let object { bpf_object__close(object) }
        object = nil
        image = nil
    }

    /// The map named `name`, with its own descriptor.
    public func map(_ name: String) throws(BPFError) -> BPFMap {
        guard let object, let map = bpf_object__find_map_by_name(object, name) else {
            throw .missing(kind: "map", name: name, available: [])
        }
        let fd = try Descriptor.duplicate(bpf_map__fd(map), "dup(map \(name))")
        return try BPFMap(descriptor: fd)
    }

    /// The program named `name` (its C function name), with its own descriptor.
    public func program(_ name: String) throws(BPFError) -> BPFProgram {
        guard let object, let program = bpf_object__find_program_by_name(object, name) else {
            throw .missing(kind: "program", name: name, available: [])
        }
        let fd = try Descriptor.duplicate(bpf_program__fd(program), "dup(program \(name))")
        return try BPFProgram(descriptor: fd, name: name, expectedAttachType: bpf_program__expected_attach_type(program))
    }
}

/// ELF bytes at a fixed address for as long as a libbpf object opened from them lives: a Swift
/// array's storage may not be pointed into past the call that lent it.
final class ObjectImage {
    let buffer: UnsafeMutableRawBufferPointer

    init(_ bytes: [UInt8]) {
        buffer = .allocate(byteCount: bytes.count, alignment: 8)
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
    }

    deinit { buffer.deallocate() }
}
