import ArgumentParser
import Foundation
import StraitAccel
import StraitBPF
import StraitSystem

struct AccelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accel",
        abstract: "Same-host TCP acceleration: sockets on this host exchange data without TCP/IP (sock_ops + sk_msg).",
        subcommands: [Enable.self, Disable.self, Status.self, Policy.self, Trace.self]
    )

    struct PolicyOptions: ParsableArguments {
        @Option(help: "Accelerate only sockets with one of these local or remote ports (comma-separated). Default: all.")
        var ports: String?
        @Option(help: "Never accelerate sockets with these local or remote ports (comma-separated): services whose receivers use splice(2).")
        var excludePorts: String?
        @Option(help: "Accelerate only sockets whose peer address is in one of these prefixes (comma-separated), e.g. 127.0.0.0/8,::1/128. Default: any.")
        var cidrs: String?
        @Option(help: "adaptive (default): a direction that streams small writes goes back to the stack; always: every direction redirects.")
        var mode: Mode?
        @Option(help: "Adaptive mode: a send of at least this many bytes keeps its direction accelerated.")
        var bulkBytes: UInt32?

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
            if let bulkBytes { policy.bulkBytes = bulkBytes }
            return policy
        }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Load, pin and attach the programs; acceleration stays on after this command exits.")
        @Option(help: "The cgroup v2 whose sockets are accelerated. Default: the root of cgroup v2 (every process).")
        var cgroup: String?
        @OptionGroup var policy: PolicyOptions
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            let named = try cgroup.map(Cgroup.init(path:)) ?? Cgroup.root()
            guard named.exists, let target = try? named.canonical() else { throw ValidationError("--cgroup \(named.path) is not a cgroup v2 directory") }
            let base = Accelerator.isEnabled(pinDirectory: pinDirectory) ? try Accelerator.open(pinDirectory: pinDirectory).policy() : AccelPolicy()
            let accelerator = try Accelerator.enable(cgroup: target, policy: try policy.applied(to: base), pinDirectory: pinDirectory)
            print("acceleration enabled on cgroup \(target.path); pinned under \(accelerator.pinDirectory)")
        }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Detach and unpin everything `enable` made.")
        @Option(help: .hidden) var pinDirectory: String = Accelerator.defaultPinDirectory

        func run() throws {
            Strait.bootstrapLogging()
            guard BPFFS.exists(pinDirectory) else {
                print("acceleration was not enabled")
                return
            }
            try Accelerator.disable(pinDirectory: pinDirectory)
            print("acceleration disabled; nothing left under \(pinDirectory)")
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
            print("mode: \(updated.adaptive ? "adaptive" : "always"), bulk bytes \(updated.bulkBytes)")
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
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try accelerator.trace(count: count, shouldStop: { stop.isRaised }) { event in
                if json, let line = try? encoder.encode(event) {
                    print(String(decoding: line, as: UTF8.self))
                } else {
                    print(event)
                }
                fflush(nil)
                return true
            }
        }
    }
}
