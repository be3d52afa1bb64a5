import CFuzzDriver
import Foundation

/// The `main` of every fuzz target (`Fuzz/<target>/main.swift`).
///
/// Built with `-DFUZZING -sanitize=fuzzer` (`make fuzz`), it hands control to libFuzzer
/// (`LLVMFuzzerRunDriver`), which takes libFuzzer's usual arguments (`-max_total_time=60
/// Fuzz/corpus/config`). Built normally, it replays: every file argument (or every file in a
/// directory argument) is one input, so the committed corpora and crash reproductions run in an
/// ordinary build, under a debugger too.
public enum FuzzMain {
    /// The target's check of one input; it must not keep the bytes. Set once, before any input.
    nonisolated(unsafe) static var body: ([UInt8]) -> Void = { _ in }

    /// Runs `body` on every input and exits: 0 when every input ran, 1 when an argument was not
    /// readable (a crash in `body` is a crash, as libFuzzer expects).
    public static func run(_ body: @escaping ([UInt8]) -> Void) -> Never {
        Self.body = body
        #if FUZZING
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzTestOneInput(data, size) })
        #else
        var failed = false
        var count = 0
        for argument in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("\(argument): no such file\n".utf8))
                failed = true
                continue
            }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []).sorted().map { argument + "/" + $0 }
                : [argument]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { failed = true; continue }
                Self.body(Array(data))
                count += 1
            }
        }
        print("replayed \(count) inputs")
        exit(failed ? 1 : 0)
        #endif
    }
}

#if FUZZING
/// libFuzzer's per-input entry, for its own `main` (linked in whole with the runtime, so the symbol
/// must exist); the target's `main` runs ``FuzzMain/run(_:)``, which drives libFuzzer itself.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzMain.body(size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
#endif
