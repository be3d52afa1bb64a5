import Foundation
import StraitTestSupport
import Testing

/// Numeric and list options that used to trap, or to mean "everything", run against the built
/// binaries: each is refused before any work, with exit 64 (EX_USAGE) and a message naming it.
@Suite("command line: bad numbers and lists are refused", .serialized)
struct CommandLineValidationTests {
    /// Runs `binary` (beside the test bundle) with `arguments` and standard input `input`; returns
    /// the exit status and standard error. Killed after 20 s.
    static func run(_ binary: String, _ arguments: [String], input: [UInt8] = []) throws -> (status: Int32, error: String) {
        let path = try #require(StraitProcesses.executable.map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent(binary).path })
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let errors = Pipe(), inputs = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = inputs
        try process.run()
        inputs.fileHandleForWriting.write(Data(input))
        try inputs.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    @Test("strait: each bad option exits 64 and names the option", arguments: [
        (["drop", "stats", "--top=-1"], "--top"),
        (["steer", "serve", "--loops", "0"], "--loops"),
        (["steer", "serve", "--loops", "-3"], "--loops"),
        (["steer", "serve", "--drain-seconds", "1e300"], "--drain-seconds"),
        (["steer", "serve", "--drain-seconds", "nan"], "--drain-seconds"),
        (["steer", "serve", "--duration", "inf"], "--duration"),
        (["accel", "enable", "--ports", ",,"], "--ports"),
        (["accel", "enable", "--ports", ""], "--ports"),
        (["accel", "enable", "--ports", "80,,81"], "--ports"),
        (["accel", "enable", "--ports", "+80"], "--ports"),
        (["accel", "policy", "--exclude-ports", "80,"], "--exclude-ports"),
        (["accel", "enable", "--cidrs", ","], "--cidrs"),
        (["accel", "enable", "--bulk-bytes", "0"], "--bulk-bytes"),
        (["accel", "trace", "--count", "0"], "--count"),
        (["proxy", "--threads", "0", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2"], "--threads"),
        (["proxy", "restart", "--timeout", "nan"], "--timeout"),
        (["bench", "drop", "--cpu", "100000"], "--cpu"),
        (["bench", "drop", "--duration", "nan"], "--duration"),
        (["bench", "accel", "--sizes", "99999999999999999m"], "--sizes"),
        (["bench", "net", "--payloads", "1,,2"], "--payloads"),
    ])
    func straitOptions(arguments: [String], option: String) throws {
        let (status, error) = try Self.run("strait", arguments)
        #expect(status == 64, "\(arguments): exit \(status), \(error)")
        #expect(error.contains(option), "\(arguments): \(error)")
    }

    @Test("strait drop load refuses an empty file or empty standard input unless --allow-empty")
    func emptyRuleSet() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-drop-empty"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let empty = directory.appendingPathComponent("rules").path
        try Data("# only a comment\n\n".utf8).write(to: URL(fileURLWithPath: empty))
        let pins = "--pin-directory=" + directory.appendingPathComponent("pins").path
        for arguments in [["drop", "load", empty, pins], ["drop", "load", "-", pins]] {
            let (status, error) = try Self.run("strait", arguments)
            #expect(status == 64, "\(arguments): exit \(status), \(error)")
            #expect(error.contains("--allow-empty"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("pins").path), "nothing was loaded")
    }

    @Test("straitnet-rpc serve refuses 0 or negative loops with exit 64", arguments: [["serve", "0", "0"], ["serve", "0", "-1"], ["load", "1", "-5", "1", "1"]])
    func rpcPeer(arguments: [String]) throws {
        let (status, error) = try Self.run("straitnet-rpc", arguments)
        #expect(status == 64, "\(arguments): exit \(status), \(error)")
        #expect(error.contains("usage"))
    }
}
