import Foundation
import StraitAccel
import StraitSystem
import StraitTestSupport
import Testing

@Suite("accel: cgroup paths written differently name the same cgroup", .serialized, kernelGate)
struct AccelCgroupPathTests {
    @Test("a trailing slash, `a/../name` and a path relative to the working directory re-enable on the same cgroup")
    func spellings() throws {
        try AccelFixture.with { fixture in
            let absolute = fixture.cgroup.cgroup.path
            let name = URL(fileURLWithPath: absolute).lastPathComponent
            let depth = FileManager.default.currentDirectoryPath.split(separator: "/").count
            let relative = String(repeating: "../", count: depth) + absolute.dropFirst()
            for spelling in [absolute + "/", absolute + "/../" + name, relative, relative + "/./"] {
                #expect(try Cgroup(path: spelling).canonical().path == absolute, "\(spelling)")
                let again = try Accelerator.enable(cgroup: Cgroup(path: spelling), pinDirectory: fixture.accelerator.pinDirectory)
                #expect(try again.cgroup()?.path == absolute, "\(spelling) is not another cgroup")
            }
            #expect(throws: SystemCallError.self) { try Cgroup(path: absolute + "/no-such-child").canonical() }
        }
    }
}
