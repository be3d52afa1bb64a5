import Foundation
import StraitSystem

/// The `fq` qdisc at an interface's root, which aggregate limits need: fq releases each packet at
/// the departure time the EDT program wrote into `skb->tstamp`. Managed with Debian's `tc`, in the
/// calling thread's network namespace; nothing else about tc is touched.
enum FairQueue {
    static var tool: String { FileManager.default.isExecutableFile(atPath: "/usr/sbin/tc") ? "/usr/sbin/tc" : "/sbin/tc" }

    /// The root qdisc's kind and handle (`0:` when it is the kernel's default, made for the device).
    static func root(of interface: String) throws -> (kind: String, handle: String) {
        let output: String
        do { output = try NetworkNamespace.runTool(tool, ["-j", "qdisc", "show", "dev", interface, "root"]) } catch {
            throw LimitError.trafficControl("\(error)")
        }
        guard let list = try? JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]],
            let root = list.first(where: { ($0["root"] as? Bool) == true }) ?? list.first,
            let kind = root["kind"] as? String, let handle = root["handle"] as? String
        else { throw LimitError.trafficControl("cannot read the root qdisc of \(interface) from `tc -j qdisc show`: \(output)") }
        return (kind, handle)
    }

    /// Makes fq the root qdisc of `interface`. Returns true when it installed it (replacing the
    /// kernel's default root), false when fq was there already. A root someone configured (any
    /// other kind with a handle of its own) is left alone: ``LimitError/rootQdiscInUse(interface:kind:)``.
    static func install(on interface: String) throws -> Bool {
        let current = try root(of: interface)
        if current.kind == "fq" { return false }
        guard current.handle == "0:" else { throw LimitError.rootQdiscInUse(interface: interface, kind: "\(current.kind) \(current.handle)") }
        do { try NetworkNamespace.runTool(tool, ["qdisc", "replace", "dev", interface, "root", "fq"]) } catch {
            if "\(error)".contains("qdisc kind is unknown") { throw LimitError.fairQueueUnavailable }
            throw LimitError.trafficControl("\(error)")
        }
        return true
    }

    /// Deletes the root qdisc Strait installed: the kernel puts its default back (noqueue on a
    /// veth, mq or fq_codel on a NIC), which is what was there before ``install(on:)``.
    static func restoreDefault(on interface: String) throws {
        do { try NetworkNamespace.runTool(tool, ["qdisc", "del", "dev", interface, "root"]) } catch {
            throw LimitError.trafficControl("\(error)")
        }
    }
}
