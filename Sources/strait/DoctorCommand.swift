import ArgumentParser
import CLibBPF
import Foundation
import StraitBPF
import StraitCLI
import StraitDrop
import StraitSystem

/// `strait doctor`: can this machine run each part of Strait? Probes by asking the kernel.
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check whether this machine can run each part of Strait (kernel features probed by loading, not by version)."
    )

    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Find whether native XDP works on each interface by attaching a pass-all program for an instant (some NICs reset their rings). Without it the answer is read-only, from the driver.")
    var probeXdp = false

    struct Check: Codable {
        var name: String
        var ok: Bool
        var detail: String
        /// Which parts of Strait need it.
        var neededBy: [String]
        /// What to do when it is missing.
        var fix: String?
    }

    struct Report: Codable {
        var kernel: String
        var checks: [Check]
        var ready: [String: Bool]
    }

    func run() throws {
        var report = Self.makeReport()
        report.checks += xdpInterfaceChecks(probe: probeXdp)
        if json {
            try printJSON(report)
        } else {
            print("kernel \(report.kernel)\n")
            print(table([["check", "", "detail", "needed by"]] + report.checks.map {
                [$0.name, $0.ok ? "ok" : "MISSING", $0.detail, $0.neededBy.joined(separator: ",")]
            }))
            let missing = report.checks.filter { !$0.ok }
            if !missing.isEmpty {
                print("\nto fix:")
                for check in missing { print("- \(check.name): \(check.fix ?? "not available on this kernel")") }
            }
            print("\n" + report.ready.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value ? "ready" : "not ready")" }.joined(separator: "\n"))
        }
        if report.checks.contains(where: { !$0.ok && $0.neededBy.contains("accel") }) { throw ExitCode(1) }
    }

    static func makeReport() -> Report {
        var checks: [Check] = []
        let root = "run as root (sudo), or grant the capability to the binary with setcap"

        let effective = capabilities()
        for (bit, name, users) in [(39, "CAP_BPF", ["accel", "proxy.sockmap", "proxy.skmsg", "drop", "steer"]), (12, "CAP_NET_ADMIN", ["accel", "proxy.sockmap", "proxy.skmsg", "drop", "steer"]), (21, "CAP_SYS_ADMIN", ["accel"])] {
            let has = effective.map { $0 & (1 << UInt64(bit)) != 0 } ?? false
            checks.append(Check(name: name, ok: has, detail: has ? "effective" : "not in the effective set", neededBy: users, fix: root))
        }

        let bpffs = BPFFS.isMounted()
        checks.append(Check(
            name: "bpffs", ok: bpffs || effective.map { $0 & (1 << 21) != 0 } == true,
            detail: bpffs ? "mounted at \(BPFFS.defaultMount)" : "not mounted; strait mounts it when it needs to",
            neededBy: ["accel", "drop"], fix: "mount -t bpf bpf /sys/fs/bpf"))

        let cgroup = Cgroup.v2MountPoint()
        checks.append(Check(
            name: "cgroup v2", ok: cgroup != nil, detail: cgroup.map { "mounted at \($0)" } ?? "not mounted",
            neededBy: ["accel", "proxy.skmsg"], fix: "mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with systemd.unified_cgroup_hierarchy)"))

        let btf = FileManager.default.fileExists(atPath: "/sys/kernel/btf/vmlinux")
        checks.append(Check(name: "kernel BTF", ok: btf, detail: btf ? "/sys/kernel/btf/vmlinux" : "absent", neededBy: ["accel", "proxy.skmsg"], fix: "a kernel built with CONFIG_DEBUG_INFO_BTF=y"))

        let programs: [(String, bpf_prog_type, [String])] = [
            ("program sock_ops", BPF_PROG_TYPE_SOCK_OPS, ["accel", "proxy.skmsg"]),
            ("program sk_msg", BPF_PROG_TYPE_SK_MSG, ["accel", "proxy.skmsg"]),
            ("program sk_skb", BPF_PROG_TYPE_SK_SKB, ["proxy.sockmap"]),
            ("program sk_reuseport", BPF_PROG_TYPE_SK_REUSEPORT, ["steer"]),
            ("program xdp", BPF_PROG_TYPE_XDP, ["drop"]),
        ]
        for (name, type, users) in programs {
            let answer = FeatureProbe.programType(type)
            checks.append(Check(name: name, ok: answer == .supported, detail: answer.rawValue, neededBy: users, fix: answer == .unknown ? root : nil))
        }
        let maps: [(String, bpf_map_type, [String])] = [
            ("map sockhash", BPF_MAP_TYPE_SOCKHASH, ["accel", "proxy.sockmap", "proxy.skmsg"]),
            ("map sk_storage", BPF_MAP_TYPE_SK_STORAGE, ["accel", "proxy.skmsg"]),
            ("map ringbuf", BPF_MAP_TYPE_RINGBUF, ["accel"]),
            ("map lpm_trie", BPF_MAP_TYPE_LPM_TRIE, ["accel", "drop"]),
            ("map reuseport_sockarray", BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, ["steer"]),
        ]
        for (name, type, users) in maps {
            let answer = FeatureProbe.mapType(type)
            checks.append(Check(name: name, ok: answer == .supported, detail: answer.rawValue, neededBy: users, fix: answer == .unknown ? root : nil))
        }
        let helpers: [(String, bpf_func_id, bpf_prog_type, [String])] = [
            ("helper msg_redirect_hash", BPF_FUNC_msg_redirect_hash, BPF_PROG_TYPE_SK_MSG, ["accel", "proxy.skmsg"]),
            ("helper get_netns_cookie (sk_msg)", BPF_FUNC_get_netns_cookie, BPF_PROG_TYPE_SK_MSG, ["accel", "proxy.skmsg"]),
            ("helper sock_hash_update", BPF_FUNC_sock_hash_update, BPF_PROG_TYPE_SOCK_OPS, ["accel", "proxy.skmsg"]),
            ("helper sk_redirect_hash", BPF_FUNC_sk_redirect_hash, BPF_PROG_TYPE_SK_SKB, ["proxy.sockmap"]),
            ("helper sk_select_reuseport", BPF_FUNC_sk_select_reuseport, BPF_PROG_TYPE_SK_REUSEPORT, ["steer"]),
        ]
        for (name, helper, type, users) in helpers {
            let answer = FeatureProbe.helper(helper, in: type)
            checks.append(Check(name: name, ok: answer == .supported, detail: answer.rawValue, neededBy: users, fix: answer == .unknown ? root : nil))
        }

        var ready: [String: Bool] = [:]
        for part in ["accel", "proxy.sockmap", "proxy.skmsg", "drop", "steer"] {
            ready[part] = checks.filter { $0.neededBy.contains(part) }.allSatisfy(\.ok)
        }
        ready["proxy (copy, splice)"] = true
        return Report(kernel: kernelRelease(), checks: checks, ready: ready)
    }

    static func kernelRelease() -> String { KernelRelease.current.text }

    /// The effective capability set, from /proc/self/status.
    static func capabilities() -> UInt64? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") })
        else { return nil }
        return UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16)
    }
}

extension DoctorCommand {
    /// One line per interface (loopback aside): native XDP, or generic only. Always `ok`: generic
    /// mode runs `strait drop` on any interface, only slower.
    func xdpInterfaceChecks(probe: Bool) -> [Check] {
        NetworkInterface.all().filter { $0.name != "lo" }.map { interface in
            let support = XDPSupport.check(interface, probe: probe)
            var detail = support.native ? "native XDP" : "generic XDP only"
            let driver = support.driver.map { "driver \($0)" } ?? "driver unknown"
            detail += support.method == "probed" ? " (probed, \(driver))" : support.method == "attached" ? " (seen attached, \(driver))" : " (read-only guess from the \(driver); --probe-xdp tests it)"
            if let attached = support.attached { detail += "; a program is attached (\(attached))" }
            return Check(
                name: "xdp \(interface.name)", ok: true, detail: detail, neededBy: ["drop"],
                fix: support.native ? nil : "strait drop attach \(interface.name) --mode generic")
        }
    }
}
