import Foundation
import PackagePlugin

/// Compiles every `*.bpf.c` in a target's `bpf/` folder to a BPF ELF object with the toolchain's
/// `clang -target bpf` (run by StraitCodegen), then embeds the object in the target as Swift source: `bpf/NAME.bpf.c`
/// becomes `EmbeddedBPFObject.NAME`, opened with `BPFObjectSpec(embedded: .NAME)`. The binary
/// carries its kernel programs, so it runs from wherever it is installed; no compiled object is
/// ever committed and no resource bundle is needed.
///
/// The programs are built for the build host's architecture (the `__TARGET_ARCH_*` macro that
/// libbpf's `PT_REGS` and CO-RE helpers need, and the host's multiarch include folder).
@main
struct BPFCompiler: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let bpfDirectory = target.directoryURL.appending(path: "bpf")
        let sources = try FileManager.default.contentsOfDirectory(atPath: bpfDirectory.path())
            .filter { $0.hasSuffix(".bpf.c") }
            .sorted()
        guard !sources.isEmpty else { return [] }
        let architecture = try HostArchitecture.current()

        let headers = try FileManager.default.contentsOfDirectory(atPath: bpfDirectory.path())
            .filter { $0.hasSuffix(".h") }
            .map { bpfDirectory.appending(path: $0) }
        // Shared structs (also imported by Swift) and kernel-only helpers (never imported by Swift).
        let abiInclude = context.package.directoryURL.appending(path: "Sources/StraitKernelABI/include")
        let kernelInclude = context.package.directoryURL.appending(path: "Sources/StraitKernelABI/bpf")
        let abiHeaders = [abiInclude, kernelInclude].flatMap { folder in
            ((try? FileManager.default.subpathsOfDirectory(atPath: folder.path())) ?? [])
                .filter { $0.hasSuffix(".h") }
                .map { folder.appending(path: $0) }
        }
        let clang = try context.tool(named: "clang").url
        let codegen = try context.tool(named: "StraitCodegen").url

        return sources.map { source in
            let input = bpfDirectory.appending(path: source)
            let object = context.pluginWorkDirectoryURL.appending(path: source.replacingOccurrences(of: ".bpf.c", with: ".bpf.o"))
            let swift = context.pluginWorkDirectoryURL.appending(path: source.replacingOccurrences(of: ".bpf.c", with: ".bpf.swift"))
            return .buildCommand(
                displayName: "Compiling and embedding BPF program \(source)",
                executable: codegen,
                arguments: [
                    "bpf", object.path(), "bpf/\(source)", swift.path(),
                    clang.path(), "-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
                    "-D__TARGET_ARCH_\(architecture.bpfTarget)",
                    "-I", bpfDirectory.path(),
                    "-I", abiInclude.path(),
                    "-I", kernelInclude.path(),
                    "-I", architecture.multiarchInclude,
                    "-c", input.path(),
                ],
                inputFiles: [input] + headers + abiHeaders,
                // Only the Swift file: a declared `.o` would become a resource bundle.
                outputFiles: [swift]
            )
        }
    }
}

/// The build host's CPU, as the BPF build names it. BPF bytecode itself is portable, but the
/// programs read `struct pt_regs` and the kernel's headers through the host's layout.
enum HostArchitecture {
    case x86_64, arm64

    static func current() throws -> HostArchitecture {
        #if arch(x86_64)
        return .x86_64
        #elseif arch(arm64)
        return .arm64
        #else
        throw BPFBuildError.unsupportedHost
        #endif
    }

    /// The suffix of libbpf's `__TARGET_ARCH_*` macro.
    var bpfTarget: String {
        switch self {
        case .x86_64: "x86"
        case .arm64: "arm64"
        }
    }

    /// Debian's multiarch include folder, where `asm/types.h` and friends live.
    var multiarchInclude: String {
        switch self {
        case .x86_64: "/usr/include/x86_64-linux-gnu"
        case .arm64: "/usr/include/aarch64-linux-gnu"
        }
    }
}

enum BPFBuildError: Error, CustomStringConvertible {
    case unsupportedHost

    var description: String {
        "BPFCompiler: the BPF programs build on x86_64 and aarch64 hosts only (this host is neither): add its __TARGET_ARCH_ and multiarch include folder to Plugins/BPFCompiler/plugin.swift"
    }
}
