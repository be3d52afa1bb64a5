import Foundation
import StraitSteer
import StraitSystem
import StraitTestSupport
import Testing

struct InjectedFailure: Error {}

/// Whether the kernel still has a BPF program with this id (`bpftool prog show id N` succeeds).
func programExists(_ id: UInt32) -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/bpftool")
    process.arguments = ["prog", "show", "id", "\(id)"]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return true }
    process.waitUntilExit()
    return process.terminationStatus == 0
}

@Suite("StraitSteer: teardown when a test fails", kernelGate)
struct TeardownTests {
    @Test("a failure mid-test leaves no namespace, no attached program and no steering maps behind")
    func failureTearsDown() throws {
        final class Seen: @unchecked Sendable {
            var namespaceName = ""
            var programID: UInt32 = 0
            var loadedDuringTest = false
        }
        let seen = Seen()
        do {
            try TestNamespace.with { namespace in
                seen.namespaceName = namespace.name
                try namespace.run {
                    let fixture = try GroupFixture(policy: .consistentHash(.fourTuple), members: 2, udp: true)
                    defer { fixture.close() }
                    seen.programID = fixture.steering.programID ?? 0
                    seen.loadedDuringTest = programExists(seen.programID)
                    throw InjectedFailure()
                }
            }
            Issue.record("the injected failure did not propagate")
        } catch is InjectedFailure {
        }
        let (namespaceName, programID) = (seen.namespaceName, seen.programID)
        #expect(programID != 0 && seen.loadedDuringTest, "bpftool saw the program while the test ran")
        #expect(!namespaceName.isEmpty && !FileManager.default.fileExists(atPath: "/var/run/netns/" + namespaceName))
        // The program goes when its last reference (the group, the object) goes; the kernel frees it after an RCU grace period.
        var gone = false
        for _ in 0..<100 where !gone {
            gone = !programExists(programID)
            if !gone { usleep(10_000) }
        }
        #expect(gone, "program \(programID) is still loaded")
    }
}
