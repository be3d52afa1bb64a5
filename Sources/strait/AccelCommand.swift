import ArgumentParser
import Foundation
import StraitAccel
import StraitBPF
import StraitCLI
import StraitSystem

struct AccelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accel",
        abstract: "Same-host TCP acceleration: sockets on this host exchange data without TCP/IP (sock_ops + sk_msg).",
        subcommands: [Enable.self, Disable.self, Status.self, Policy.self, Calibrate.self, Trace.self]
    )

    struct PolicyOptions: ParsableArguments {
        @Option(help: "Accelerate only sockets with one of these local or remote ports (comma-separated). Default: all.")
        var ports: String?
        @Option(help: "Never accelerate sockets with these local or remote ports (comma-separated): services whose receivers use splice(2).")
        var excludePorts: String?
        @Option(help: "Accelerate only sockets whose peer address is in one of these prefixes (comma-separated), e.g. 127.0.0.0/8,::1/128. Default: any.")
        var cidrs: String?
        @Option(help: "adaptive (default): a direction that streams small writes goes back to the stack, unless the calibration measured that size faster redirected; always: every direction redirects.")
        var mode: Mode?
        @Option(help: "Adaptive mode: a send of at least this many bytes keeps its direction accelerated, whatever the calibration measured (overrides it).")
        var bulkBytes: UInt32?
        @Flag(help: "Adaptive mode: bulk sends follow this machine's calibration again (undoes --bulk-bytes).")
        var calibratedBulk = false

        enum Mode: String, ExpressibleByArgument { case adaptive, always }

        /// Comma-separated items, none empty: `""`, `,,` or `80,,81` are refused rather than read as
        /// an empty list, which would mean every port or every peer.
        static func items(_ text: String, option: String) throws -> [String] {
            let items = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !items.contains(where: \.isEmpty) else {
                throw ValidationError("\(option): a comma-separated list with no empty item (got '\(text)'); leave the option out for no restriction")
            }
            return items
        }

        static func portList(_ text: String, option: String) throws -> [UInt16] {
            try items(text, option: option).map { item in
                guard item.allSatisfy(\.isNumber), let port = UInt16(item), port > 0 else {
                    throw ValidationError("\(option): '\(item)' is not a port number (1-65535)")
                }
                return port
            }
        }

        func validate() throws {
            if let bulkBytes, bulkBytes == 0 { throw ValidationError("--bulk-bytes: at least 1 byte") }
            if let ports { _ = try Self.portList(ports, option: "--ports") }
            if let excludePorts { _ = try Self.portList(excludePorts, option: "--exclude-ports") }
            if let cidrs { _ = try Self.items(cidrs, option: "--cidrs") }
        }

        func applied(to base: AccelPolicy) throws -> AccelPolicy {
            var policy = base
            if let ports { policy.ports = try Self.portList(ports, option: "--ports") }
            if let excludePorts { policy.excludePorts = try Self.portList(excludePorts, option: "--exclude-ports") }
            if let cidrs {
                policy.cidrs = try Self.items(cidrs, option: "--cidrs")
                do { _ = try policy.parsedCIDRs() } catch { throw ValidationError("--cidrs: \(error)") }
            }
            if let mode { policy.adaptive = mode == .adaptive }
            if calibratedBulk {
                policy.bulkBytes = AccelPolicy().bulkBytes
                policy.bulkDecision = .calibrated
            }
            if let bulkBytes {
                policy.bulkBytes = bulkBytes
                policy.bulkDecision = .byHand
            }
            return policy
        }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Load, pin and attach the programs; acceleration stays on after this command exits.")
        @Option(help: "The cgroup v2 whose sockets are accelerated. Default: the root of cgroup v2 (every process).")
        var cgroup: String?
        @OptionGroup var policy: PolicyOptions
        @Flag(help: "Skip the calibration (about 4 s of loopback traffic in a private cgroup); every bulk size then redirects, unless --bulk-bytes says otherwise, and small-write streams go to the stack.")
        var noCalibrate = false
        @Flag(help: "Print the status after enabling, as `strait accel status --json` does.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            let named = try cgroup.map(Cgroup.init(path:)) ?? Cgroup.root()
            guard named.exists, let target = try? named.canonical() else { throw CommandFailure("--cgroup \(named.path) is not a cgroup v2 directory: create it (mkdir) under the cgroup v2 mount, or name one that exists") }
            let base = Accelerator.isEnabled(pinDirectory: pinDirectory) ? try Accelerator.open(pinDirectory: pinDirectory).policy() : AccelPolicy()
            let accelerator = try Accelerator.enable(
                cgroup: target, policy: try policy.applied(to: base), pinDirectory: pinDirectory, calibration: noCalibrate ? nil : AccelCalibration.Plan())
            if json { return try printJSON(try Accelerator.status(pinDirectory: pinDirectory)) }
            print("acceleration enabled on cgroup \(target.path); pinned under \(accelerator.pinDirectory)")
            print(try Calibrate.summary(of: accelerator))
        }
    }

    struct Calibrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure again where redirect beats plain TCP on this machine (loopback, private cgroup, about 4 s) and put the result in force.",
            discussion: "Accelerated sockets are not touched; bulk sends and small-write streams of new directions follow the new result. --bulk-bytes, when set, keeps overriding it.")
        @Flag(help: "Print JSON.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            let accelerator = try Accelerator.open(pinDirectory: pinDirectory)
            let result = try accelerator.calibrate()
            if json { return try printJSON(result) }
            print(try Self.summary(of: accelerator))
        }

        /// The sizes in force (bulk sends, streams of small writes) and the measurement behind
        /// them, as `status` prints them.
        static func summary(of accelerator: Accelerator) throws -> String {
            let policy = try accelerator.policy()
            guard policy.adaptive else { return "mode always: every direction redirects from its first send" }
            let sizes = AccelCalibration.describe(try accelerator.redirectedBulkSizes())
            let streams = "small-write streams redirected: \(AccelCalibration.describe(try accelerator.redirectedStreamSizes()))"
            if policy.bulkDecision == .byHand { return "bulk sends redirected: \(sizes) (--bulk-bytes \(policy.bulkBytes), set by hand)\n\(streams)" }
            guard let calibration = try accelerator.calibration() else { return "bulk sends redirected: \(sizes) (not calibrated)\n\(streams)" }
            let when = ISO8601DateFormatter().string(from: calibration.measuredAt)
            var rows = [["calibration", "plain Gbit/s", "redirected Gbit/s", "median ratio", "lower bound", "decision"]]
            for point in calibration.points {
                func list(_ values: [Double], _ format: String) -> String { values.map { String(format: format, $0) }.joined(separator: " / ") }
                let kind = point.messageBytes < Int(policy.bulkBytes) ? "streams" : "bulk"
                rows.append([
                    formatBytes(point.messageBytes), list(point.plainGbitS, "%.1f"), list(point.redirectedGbitS, "%.1f"),
                    list(point.ratios.map(\.median), "%.2fx"), list(point.ratios.map(\.lowerBound), "%.2fx"), "\(kind): \(point.redirects ? "redirect" : "stack")",
                ])
            }
            let placements = calibration.points.first.map { $0.plainGbitS.count > 1 ? "one CPU / two CPUs" : "one CPU" } ?? ""
            let rule = AccelCalibration.DecisionRule()
            return """
                bulk sends redirected: \(sizes)
                \(streams)
                (calibrated \(when), took \(String(format: "%.1f", calibration.elapsedSeconds)) s, \(calibration.pairs) interleaved pairs per size and placement; \(placements); \
                redirect where every placement's median ratio ≥ \(String(format: "%.2f", rule.minimumGain))x and its \(Int(rule.confidence * 100))% lower bound > 1x)

                """ + table(rows)
        }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Detach and unpin everything `enable` made.")
        @Flag(help: "Print JSON: whether it was enabled, and the pin folder.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        struct Outcome: Encodable {
            var wasEnabled: Bool
            var pinDirectory: String
        }

        func run() throws {
            Strait.bootstrapLogging()
            let wasEnabled = BPFFS.exists(pinDirectory)
            if wasEnabled { try Accelerator.disable(pinDirectory: pinDirectory) }
            if json { return try printJSON(Outcome(wasEnabled: wasEnabled, pinDirectory: pinDirectory)) }
            print(wasEnabled ? "acceleration disabled; nothing left under \(pinDirectory)" : "acceleration was not enabled")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Whether acceleration is on, for which cgroup and policy, and what it has done.")
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "Also list the sockets in the hash now (4-tuple and network namespace).") var sockets = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            let status = try Accelerator.status(pinDirectory: pinDirectory)
            let tracked = sockets && status.enabled ? try Accelerator.open(pinDirectory: pinDirectory).trackedSockets() : []
            if json {
                struct Listed: Encodable {
                    var status: AccelStatus
                    var sockets: [String]?
                }
                return try printJSON(Listed(status: status, sockets: sockets ? tracked.map(\.tupleDescription) : nil))
            }
            guard status.enabled, let policy = status.policy else {
                print("acceleration: disabled")
                return
            }
            let c = status.counters
            print("""
                acceleration: enabled on cgroup \(status.cgroup ?? "(unknown)")
                policy: ports \(policy.ports.isEmpty ? "all" : policy.ports.map(String.init).joined(separator: ","))\
                \(policy.excludePorts.isEmpty ? "" : " except " + policy.excludePorts.map(String.init).joined(separator: ",")), \
                peers \(policy.cidrs.isEmpty ? "any" : policy.cidrs.joined(separator: ",")), \
                \(policy.adaptive ? "adaptive (bulk ≥ \(policy.bulkBytes) B)" : "always redirect")
                sockets tracked now: \(status.socketsTracked)
                \(try Calibrate.summary(of: try Accelerator.open(pinDirectory: pinDirectory)))

                """)
            print(table([
                ["counter", "messages", "bytes"],
                ["redirected to peer", "\(c.redirectedMessages)", "\(c.redirectedBytes)"],
                ["stack: peer not tracked", "\(c.fallbackPeerNotTracked.messages)", "\(c.fallbackPeerNotTracked.bytes)"],
                ["stack: small streaming writes", "\(c.fallbackStack.messages)", "\(c.fallbackStack.bytes)"],
                ["stack: redirect switched off", "\(c.fallbackDisabled.messages)", "\(c.fallbackDisabled.bytes)"],
            ]))
            print("\nsockets entered \(c.socketsEntered), skipped by policy \(c.socketsSkippedByPolicy), released to the stack \(c.socketsReleasedToStack), events dropped \(c.eventsDropped)")
            if sockets {
                print("\nsockets in the hash:")
                for key in tracked { print("  \(key.tupleDescription)  netns \(key.netns_cookie)") }
            }
        }
    }

    struct Policy: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show or change the policy while enabled, without reloading a program.")
        @OptionGroup var policy: PolicyOptions
        @Flag(help: "Print JSON.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            let accelerator = try Accelerator.open(pinDirectory: pinDirectory)
            let updated = try policy.applied(to: try accelerator.policy())
            try accelerator.setPolicy(updated)
            if json { return try printJSON(updated) }
            print("ports: \(updated.ports.isEmpty ? "all" : updated.ports.map(String.init).joined(separator: ","))")
            print("excluded ports: \(updated.excludePorts.isEmpty ? "none" : updated.excludePorts.map(String.init).joined(separator: ","))")
            print("cidrs: \(updated.cidrs.isEmpty ? "any" : updated.cidrs.joined(separator: ","))")
            print("mode: \(updated.adaptive ? "adaptive" : "always"), bulk bytes \(updated.bulkBytes) (\(updated.bulkDecision == .byHand ? "by hand" : "calibrated"))")
            print(try Calibrate.summary(of: accelerator))
        }
    }

    struct Trace: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stream socket events (established, accelerated, released, closed) until interrupted.")
        @Option(help: "Stop after this many events.") var count: Int?
        @Flag(help: "One JSON object per line.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func validate() throws {
            if let count, count < 1 { throw ValidationError("--count: at least 1 event (got \(count))") }
        }

        func run() throws {
            Strait.bootstrapLogging()
            let accelerator = try Accelerator.open(pinDirectory: pinDirectory)
            let stop = SignalFlag.interrupt()
            try accelerator.trace(count: count, shouldStop: { stop.isRaised }) { event in
                if json, let line = try? jsonLine(event) {
                    print(line)
                } else {
                    print(event)
                }
                fflush(nil)
                return true
            }
        }
    }
}
