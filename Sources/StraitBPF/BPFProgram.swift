import CLibBPF

/// A live, verified BPF program, owning one descriptor. Attach it with one of the `attach…`
/// methods (see `Links/`); each returns a ``BPFLink`` that detaches when closed.
public final class BPFProgram: @unchecked Sendable {
    let descriptor: Descriptor
    /// The program's name: in full when it came from an object file, else as the kernel keeps it
    /// (15 characters).
    public let name: String
    /// The program's type (`BPF_PROG_TYPE_*`), which decides where it may attach.
    public let type: bpf_prog_type
    /// The kernel's id for this program (as `bpftool prog show` lists it).
    public let id: UInt32
    /// The attach type the program was loaded for (e.g. `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`), when
    /// it came from an object file; nil for a program opened from a pin (the kernel does not report it).
    public let expectedAttachType: bpf_attach_type?

    init(descriptor: Descriptor, name fullName: String? = nil, expectedAttachType: bpf_attach_type? = nil) throws(BPFError) {
        self.descriptor = descriptor
        self.expectedAttachType = expectedAttachType
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        try libbpfCall("bpf_obj_get_info_by_fd(program)") { bpf_obj_get_info_by_fd(descriptor.rawValue, &info, &length) }
        name = fullName ?? withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
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

extension BPFProgram {
    /// What one `BPF_PROG_TEST_RUN` returned.
    public struct TestRunResult: Sendable {
        /// The program's return value (e.g. an XDP action).
        public var returnValue: UInt32
        /// Mean nanoseconds per run, as the kernel measured it.
        public var nanosecondsPerRun: UInt32
        /// The packet after the program (it may rewrite or trim it).
        public var output: [UInt8]
    }

    /// Runs the program in the kernel on `input` without attaching it (`BPF_PROG_TEST_RUN`), for
    /// program types that support it (XDP, tc, …). Each call is one syscall running `repetitions` times.
    public func testRun(input: [UInt8], repetitions: UInt32 = 1) throws(BPFError) -> TestRunResult {
        var output = [UInt8](repeating: 0, count: max(input.count, 256) + 256)
        let (result, options) = withLibBPFOptions(bpf_test_run_opts.self) { options in
            options.pointee.repeat = Int32(clamping: repetitions)
            let result = input.withUnsafeBytes { inputBytes in
                output.withUnsafeMutableBytes { outputBytes in
                    options.pointee.data_in = inputBytes.baseAddress
                    options.pointee.data_size_in = UInt32(inputBytes.count)
                    options.pointee.data_out = outputBytes.baseAddress
                    options.pointee.data_size_out = UInt32(outputBytes.count)
                    return bpf_prog_test_run_opts(descriptor.rawValue, options)
                }
            }
            return (result, options.pointee)
        }
        if result < 0 { throw .call("bpf_prog_test_run(\(name))", .init(rawValue: -result)) }
        return TestRunResult(returnValue: options.retval, nanosecondsPerRun: options.duration, output: Array(output.prefix(Int(options.data_size_out))))
    }
}
