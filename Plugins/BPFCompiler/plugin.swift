import Foundation
import PackagePlugin

/// Compiles every `*.bpf.c` in a target's `bpf/` folder to a BPF ELF object with the toolchain's
/// `clang -target bpf`. The objects are build outputs, so SwiftPM ships them as the target's resources;
/// no compiled object is ever committed.
@main
struct BPFCompiler: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let bpfDirectory = target.directoryURL.appending(path: "bpf")
        let sources = try FileManager.default.contentsOfDirectory(atPath: bpfDirectory.path())
            .filter { $0.hasSuffix(".bpf.c") }
            .sorted()
        guard !sources.isEmpty else { return [] }

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

        return sources.map { source in
            let input = bpfDirectory.appending(path: source)
            let output = context.pluginWorkDirectoryURL.appending(path: source.replacingOccurrences(of: ".bpf.c", with: ".bpf.o"))
            return .buildCommand(
                displayName: "Compiling BPF program \(source)",
                executable: clang,
                arguments: [
                    "-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
                    "-D__TARGET_ARCH_x86",
                    "-I", bpfDirectory.path(),
                    "-I", abiInclude.path(),
                    "-I", kernelInclude.path(),
                    "-I", "/usr/include/x86_64-linux-gnu",
                    "-c", input.path(), "-o", output.path(),
                ],
                inputFiles: [input] + headers + abiHeaders,
                outputFiles: [output]
            )
        }
    }
}
