import CLibBPF

#if canImport(Glibc)
import Glibc
#endif

/// libbpf's `LIBBPF_OPTS(type, name)` for Swift: an options struct whose every byte is zero,
/// padding included, with `sz` set to the struct's size as this module's libbpf header defines it.
///
/// libbpf refuses an options struct whose bytes past the last field it knows are not zero
/// ("… has non-zero extra bytes"). A Swift `var options = bpf_xdp_query_opts()` zeroes the fields
/// but not necessarily the padding (the trailing `size_t :0` of these structs), and Swift's
/// `MemoryLayout.size` leaves the tail padding out while C's `sizeof` counts it. So the struct is
/// built in memory cleared with `memset`, `sz` is the C size (`MemoryLayout.stride`, equal to
/// `sizeof` for these structs: their alignment is `size_t`'s), and `body` sets fields through the
/// pointer, which writes those fields only. The memory lives until `body` returns.
func withLibBPFOptions<Options, Result, Failure: Error>(
    _ type: Options.Type, _ body: (UnsafeMutablePointer<Options>) throws(Failure) -> Result
) throws(Failure) -> Result {
    let size = MemoryLayout<Options>.stride
    let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<Options>.alignment)
    defer { raw.deallocate() }
    memset(raw, 0, size)
    // Every libbpf options struct starts with `size_t sz`.
    raw.storeBytes(of: size, as: Int.self)
    return try body(raw.bindMemory(to: Options.self, capacity: 1))
}
