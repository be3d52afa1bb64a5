import ArgumentParser
import Foundation
import StraitBPF
import StraitCLI
import StraitLimit
import StraitSystem

struct LimitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limit",
        abstract: "Rate limits: per TCP connection (sock_ops pacing) or per client/cgroup in aggregate (EDT at tc egress under fq); rules change at run time.",
        subcommands: [Set.self, Remove.self, List.self, Stats.self]
    )

    struct Common: ParsableArguments {
        @Option(help: "The bpffs folder holding strait limit's pins.") var pinDirectory: String = Limiter.defaultPinDirectory
    }

    /// Which traffic a rule covers.
    struct Target: ParsableArguments {
        @Flag(help: "One rate shared by all matching traffic leaving --interface (else: each connection gets the rate).") var aggregate = false
        @Option(help: "The cgroup v2 directory whose sockets the rule covers (itself, not its children).") var cgroup: String?
        @Option(help: "Aggregate: the interface whose egress is limited.") var interface: String?
        @Option(help: "Per connection: only connections on this local port.") var localPort: UInt16?
        @Option(help: "Per connection: only connections to this remote port.") var remotePort: UInt16?
        @Option(help: "Only traffic to this address or prefix (198.18.0.0/15, 2001:db8::7).") var remote: String?

        func selector() throws -> LimitSelector {
            let cgroupID = try cgroup.map { try Limiter.cgroupID(path: $0) }
            let prefix = try remote.map { text -> IPPrefix in
                guard let prefix = IPPrefix(text) else { throw ValidationError("--remote: '\(text)' is not an address or prefix") }
                return prefix
            }
            if aggregate {
                guard let interface else { throw ValidationError("--aggregate needs --interface (the egress the limit applies to)") }
                if localPort != nil || remotePort != nil { throw ValidationError("--local-port and --remote-port are per-connection selectors") }
                return try .aggregate(interface: interface, cgroupID: cgroupID, remote: prefix)
            }
            guard let cgroupID else { throw ValidationError("a per-connection rule needs --cgroup (the sock_ops program runs on that cgroup)") }
            if interface != nil { throw ValidationError("--interface is for --aggregate rules") }
            return try .connection(cgroupID: cgroupID, localPort: localPort, remotePort: remotePort, remote: prefix)
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a rule, or change its rate; established connections follow at their next ACK.",
            discussion: "RATE: 100mbit, 1.5gbit, 250kbit (decimal bits per second). Aggregate rules install fq as the interface's root qdisc when the kernel's default is there, and say so.")
        @Argument(help: "The rate.") var rate: String
        @OptionGroup var target: Target
        @Option(help: "Refuse rules below this rate that would cover the SSH session this command runs over.") var floor = "1mbit"
        @OptionGroup var safety: DropCommand.Safety
        @OptionGroup var namespace: DropCommand.Namespace
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            guard let rate = LimitRate(parsing: rate) else { throw ValidationError("'\(self.rate)' is not a rate (100mbit, 1gbit, 500kbit)") }
            guard let floor = LimitRate(parsing: floor) else { throw ValidationError("--floor: '\(self.floor)' is not a rate") }
            let selector = try target.selector()
            let protecting = try safety.sources()
            let limiter = try Limiter.open(pinDirectory: common.pinDirectory, create: true)
            nonisolated(unsafe) var outcome: Limiter.SetOutcome?
            try namespace.run { outcome = try limiter.set(selector, rate: rate, protecting: protecting, floor: floor) }
            if outcome?.installedFairQueue == true { print("installed fq as the root qdisc of \(selector.interface ?? "?") (remove restores the default)") }
            print(outcome?.created == true ? "set \(rate) \(selector)" : "changed to \(rate): \(selector)")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a rule (the same selector as set), or --all; the last one leaves nothing attached or pinned.")
        @OptionGroup var target: Target
        @Flag(help: "Remove every rule, detach everything and restore every qdisc strait limit installed.") var all = false
        @Option(help: "Seconds the program stays on a cgroup after its last rule, so busy connections return to unlimited first.") var grace = 1.0
        @OptionGroup var namespace: DropCommand.Namespace
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let pins = common.pinDirectory
            if all {
                try namespace.run { try Limiter.removeAll(pinDirectory: pins) }
                return print("removed every rule; nothing of strait limit remains in the kernel")
            }
            let selector = try target.selector()
            let limiter = try Limiter.open(pinDirectory: pins)
            nonisolated(unsafe) var outcome: Limiter.RemoveOutcome?
            let grace = self.grace
            try namespace.run { outcome = try limiter.remove(selector, grace: grace) }
            guard let outcome, outcome.removed else { return print("no rule \(selector)") }
            print("removed \(selector)")
            if let interface = outcome.restoredQdisc { print("deleted the fq strait limit installed on \(interface): the default root qdisc is back") }
            if outcome.nothingLeft { print("no rule remains; nothing of strait limit remains in the kernel") }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the rules and where the programs are attached.")
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var common: Common

        struct Listing: Encodable {
            var attachments: Limiter.Attachments
            var rules: [LimitRule]
        }

        func run() throws {
            Strait.bootstrapLogging()
            guard Limiter.isLoaded(pinDirectory: common.pinDirectory) else {
                if json { try printJSON(Listing(attachments: .none, rules: [])) } else { print("strait limit is not loaded") }
                return
            }
            let limiter = try Limiter.open(pinDirectory: common.pinDirectory)
            let listing = Listing(attachments: try limiter.attachments(), rules: try limiter.rulesList())
            if json { return try printJSON(listing) }
            for cgroup in listing.attachments.cgroups { print("# sock_ops on cgroup \(cgroup)") }
            for interface in listing.attachments.interfaces {
                print("# egress on \(interface.name)" + (interface.installedFairQueue ? " (fq installed by strait limit)" : " (fq was there)"))
            }
            print(table([["id", "rate", "rule"]] + listing.rules.map { [String($0.id), $0.rate.description, $0.selector.description] }))
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Per-rule counters (per-CPU, summed): packets paced and dropped in aggregate, sockets paced per connection.")
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let stats = try Limiter.open(pinDirectory: common.pinDirectory).stats()
            if json { return try printJSON(stats) }
            print(table([["id", "rate", "rule", "sockets", "packets", "bytes", "delayed", "dropped"]] + stats.rules.map {
                [String($0.rule.id), $0.rule.rate.description, $0.rule.selector.description, String($0.sockets), String($0.packets), String($0.bytes), String($0.delayed), String($0.dropped)]
            }))
        }
    }
}
