import Foundation
import StraitTestSupport
import Testing
import Yams

/// The files under deploy/: the systemd units linted by `systemd-analyze verify`, the Kubernetes
/// manifests validated offline against the API schemas, and the ConfigMap's agent file checked by
/// `strait agent --check`. No systemd and no cluster run here.
@Suite("deploy: systemd units and Kubernetes manifests")
struct DeployTests {
    static let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("deploy").path

    /// Runs a command; returns its exit status and everything it printed (both streams).
    func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func temporaryFolder() throws -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueTestName("strait-deploy")).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    @Test("each unit passes systemd-analyze verify without a warning", arguments: ["strait-agent.service", "strait-proxy.service"])
    func unit(name: String) throws {
        let analyze = "/usr/bin/systemd-analyze"
        try #require(FileManager.default.isExecutableFile(atPath: analyze), "systemd-analyze is missing: `make deps` installs the systemd package")
        let binary = try #require(BuiltProducts.executable("strait"), "build the strait product first (make test does)")
        // verify wants the ExecStart binary to exist: the unit is checked with its path pointing at this build.
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let text = try String(contentsOfFile: Self.deploy + "/systemd/" + name, encoding: .utf8)
        #expect(text.contains("Type=notify"))
        #expect(text.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        for capability in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] { #expect(text.contains(capability)) }
        try text.replacingOccurrences(of: "/usr/local/bin/strait", with: binary).write(toFile: folder + "/" + name, atomically: true, encoding: .utf8)
        let result = try run(analyze, ["verify", folder + "/" + name])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "systemd-analyze warned:\n\(result.output)")
    }

    @Test("every manifest validates against the Kubernetes schemas (strict: no unknown field)")
    func manifests() throws {
        let folder = Self.deploy + "/kubernetes"
        let kustomization = try #require(try Yams.load(yaml: String(contentsOfFile: folder + "/kustomization.yaml", encoding: .utf8)) as? [String: Any])
        let resources = try #require(kustomization["resources"] as? [String])
        let files = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".yaml") && $0 != "kustomization.yaml" }
        #expect(Set(resources) == Set(files), "kustomization.yaml lists every manifest")
        let result = try run("/usr/bin/env", ["python3", "-m", "kubernetes_validate", "--strict"] + files.sorted().map { folder + "/" + $0 })
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.output.contains("ERROR") && !result.output.contains("WARN"), "\(result.output)")
    }

    @Test("the DaemonSet runs the agent on the host network with the mounts and probes it needs")
    func daemonSet() throws {
        let manifest = try #require(try Yams.load(yaml: String(contentsOfFile: Self.deploy + "/kubernetes/daemonset.yaml", encoding: .utf8)) as? [String: Any])
        let pod = try #require(((manifest["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        #expect(pod["hostNetwork"] as? Bool == true)
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)
        let mounts = (container["volumeMounts"] as? [[String: Any]] ?? []).compactMap { $0["mountPath"] as? String }
        for path in ["/sys/fs/bpf", "/sys/fs/cgroup", "/run/strait", "/etc/strait"] { #expect(mounts.contains(path), "\(mounts)") }
        #expect(((container["livenessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String == "/healthz")
        #expect(((container["readinessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String == "/readyz")
    }

    @Test("the ConfigMap's agent file passes `strait agent --check`")
    func configMapChecks() throws {
        let binary = try #require(BuiltProducts.executable("strait"), "build the strait product first (make test does)")
        let manifest = try #require(try Yams.load(yaml: String(contentsOfFile: Self.deploy + "/kubernetes/configmap.yaml", encoding: .utf8)) as? [String: Any])
        let file = try #require((manifest["data"] as? [String: Any])?["strait.yaml"] as? String)
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try file.write(toFile: folder + "/strait.yaml", atomically: true, encoding: .utf8)
        let result = try run(binary, ["agent", "--check", folder + "/strait.yaml"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("ok (accel"), "\(result.output)")
        // And a broken one fails, located.
        try (file + "bogus: 1\n").write(toFile: folder + "/broken.yaml", atomically: true, encoding: .utf8)
        let broken = try run(binary, ["agent", "--check", folder + "/broken.yaml"])
        #expect(broken.status == 1)
        #expect(broken.output.contains(folder + "/broken.yaml:"), "\(broken.output)")
    }
}
