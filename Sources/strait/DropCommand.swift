import ArgumentParser
import Foundation
import StraitBPF
import StraitCLI
import StraitDrop
import StraitSystem

struct DropCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drop",
        abstract: "XDP early drop: frames matching rules (source prefix, port, MAC, ARP sender) are dropped in the driver; rules change at run time.",
        subcommands: [Attach.self, Detach.self, Add.self, Remove.self, List.self, Load.self, Mode.self, Stats.self]
    )

    /// What every `strait drop` command takes: the pin folder (hidden; tests use their own) and
    /// `--json`, which prints the outcome as one JSON object instead of a sentence.
    struct Common: ParsableArguments {
        @Flag(help: "Print JSON.") var json = false
        @Option(help: .hidden) var pinDirectory: String = Dropper.defaultPinDirectory
    }

    /// What a rule change did: the rules it changed and the ones that were already so.
    struct RuleChange: Encodable {
        var changed: [String] = []
        var unchanged: [String] = []
    }

    /// Interface names resolve in a network namespace. `ip netns exec` would remount /sys and hide
    /// /sys/fs/bpf (and the pins with it), so Strait enters the namespace itself, on one thread.
    struct Namespace: ParsableArguments {
        @Option(help: "The named network namespace (as `ip netns` lists it) the interface is in.") var netns: String?

        func run(_ body: @escaping @Sendable () throws -> Void) throws {
            guard let netns else { return try body() }
            try NetworkNamespace(name: netns).run(body)
        }
    }

    /// Who a rule change must not lock out, unless --force.
    struct Safety: ParsableArguments {
        @Flag(help: "Skip the check that refuses changes cutting off the address this command is run from (SSH peers).")
        var force = false
        @Option(name: .customLong("protect"), help: "Also protect this address (repeatable).")
        var protected: [String] = []

        func sources() throws -> [ProtectedSource] {
            if force { return [] }
            var sources = ProtectedSource.fromEnvironment(ProcessInfo.processInfo.environment)
            let port = sources.first?.tcpPort ?? 22
            for peer in ProtectedSource.establishedPeers(localPort: port) where !sources.contains(where: { $0.address == peer.address }) {
                sources.append(peer)
            }
            for text in protected {
                guard let address = IPAddress(text) else { throw ValidationError("--protect: '\(text)' is not an IP address") }
                sources.append(ProtectedSource(address: address, tcpPort: nil, origin: "--protect"))
            }
            return sources
        }
    }

    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Attach the drop program to an interface (a pinned BPF link: it stays after this command exits).")
        @Argument(help: "The interface.") var interface: String
        @Option(help: "native: in the driver, before a socket buffer exists; generic: after, on any driver.") var mode: XDPMode = .native
        @OptionGroup var namespace: Namespace
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory, create: true)
            let (interface, mode) = (self.interface, self.mode)
            try namespace.run { try dropper.attach(interface: interface, mode: mode) }
            let rules = try dropper.ruleSet()
            if common.json { return try printJSON(List.Listing(mode: rules.mode, attachments: dropper.attachments(), rules: rules.rules)) }
            print("attached to \(interface) (\(mode)); \(rules.rules.count) rules, \(rules.mode)-list mode")
        }
    }

    struct Detach: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Detach from an interface; detaching the last one removes the program and its rules from the kernel.")
        @Argument(help: "The interface.") var interface: String
        @OptionGroup var namespace: Namespace
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory)
            let interface = self.interface
            try namespace.run { try dropper.detach(interface: interface) }
            let loaded = Dropper.isLoaded(pinDirectory: common.pinDirectory)
            if common.json {
                struct Outcome: Encodable { var detached: String; var stillLoaded: Bool }
                return try printJSON(Outcome(detached: interface, stillLoaded: loaded))
            }
            print(loaded ? "detached from \(interface)" : "detached from \(interface); nothing of strait drop remains in the kernel")
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add rules to the active set; the next packet sees them.",
            discussion: "RULE: 198.18.0.0/15 | 2001:db8::/32 | tcp/PORT | udp/PORT | mac 02:00:5e:00:53:01 | arp 198.18.0.7 (quote rules with spaces)")
        @Argument(help: "Rules.") var rules: [String]
        @OptionGroup var safety: Safety
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let parsed = try rules.map { try DropRule(parsing: $0) }
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory, create: true)
            let protecting = try safety.sources()
            var change = RuleChange()
            for rule in parsed {
                if try dropper.add(rule, protecting: protecting) { change.changed.append("\(rule)") } else { change.unchanged.append("\(rule)") }
            }
            if common.json { return try printJSON(change) }
            change.changed.forEach { print("added \($0)") }
            change.unchanged.forEach { print("\($0) was there already") }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove rules (exactly as added) from the active set.")
        @Argument(help: "Rules.") var rules: [String]
        @OptionGroup var safety: Safety
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let parsed = try rules.map { try DropRule(parsing: $0) }
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory)
            let protecting = try safety.sources()
            var change = RuleChange()
            for rule in parsed {
                if try dropper.remove(rule, protecting: protecting) { change.changed.append("\(rule)") } else { change.unchanged.append("\(rule)") }
            }
            if common.json { return try printJSON(change) }
            change.changed.forEach { print("removed \($0)") }
            change.unchanged.forEach { print("\($0) was not there") }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the mode, the interfaces and the active rules.")
        @OptionGroup var common: Common

        struct Listing: Codable {
            var mode: DropMode
            var attachments: [Dropper.Attachment]
            var rules: [DropRule]
        }

        func run() throws {
            Strait.bootstrapLogging()
            guard Dropper.isLoaded(pinDirectory: common.pinDirectory) else {
                if common.json { try printJSON(Listing(mode: .block, attachments: [], rules: [])) } else { print("strait drop is not loaded") }
                return
            }
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory)
            let set = try dropper.ruleSet()
            let listing = Listing(mode: set.mode, attachments: dropper.attachments(), rules: set.rules)
            if common.json { return try printJSON(listing) }
            print("mode \(set.mode)")
            let here = try? NetworkNamespace.currentInode()
            for attachment in listing.attachments {
                let place = attachment.netns == here ? "" : " in netns \(NetworkNamespace.named(inode: attachment.netns) ?? "inode \(attachment.netns)")"
                print("# attached to \(attachment.interface)\(place) (\(attachment.mode))\(attachment.live ? "" : " — interface gone, run detach")")
            }
            for rule in set.rules { print(rule) }
        }
    }

    struct Load: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the whole rule set at once from a file (one rule a line, `#` comments, optional `mode allow|block`; `-` reads standard input).")
        @Argument(help: "The rule file.") var file: String
        @Flag(help: "Accept a file with no rules (it removes every rule; in allow-list mode it drops everything).") var allowEmpty = false
        @OptionGroup var safety: Safety
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let bytes: [UInt8]
            do { bytes = try FileContents.read(path: file, limit: DropRuleSet.maximumFileBytes) } catch {
                throw ValidationError("cannot read \(file == "-" ? "standard input" : file): \(error)")
            }
            let set = try DropRuleSet(parsingFile: bytes)
            guard !set.rules.isEmpty || allowEmpty else {
                throw ValidationError("\(file == "-" ? "standard input" : file) has no rules: loading it would remove every rule. Pass --allow-empty if that is what you want.")
            }
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory, create: true)
            try dropper.load(set, protecting: try safety.sources())
            if common.json {
                struct Outcome: Encodable { var rules: Int; var mode: DropMode }
                return try printJSON(Outcome(rules: set.rules.count, mode: set.mode))
            }
            print("loaded \(set.rules.count) rules, \(set.mode)-list mode")
        }
    }

    struct Mode: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "block: drop what the rules match (default); allow: pass only what they match.")
        @Argument(help: "block or allow.") var mode: DropMode
        @OptionGroup var safety: Safety
        @OptionGroup var common: Common

        func run() throws {
            Strait.bootstrapLogging()
            let dropper = try Dropper.open(pinDirectory: common.pinDirectory, create: true)
            try dropper.setMode(mode, protecting: try safety.sources())
            if common.json {
                struct Outcome: Encodable { var mode: DropMode }
                return try printJSON(Outcome(mode: mode))
            }
            print("\(mode)-list mode")
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Frames passed and dropped, per verdict and per rule (per-CPU counters, summed).")
        @Flag(help: "Print the Prometheus text format (for node_exporter's textfile collector).") var prometheus = false
        @Option(help: "Rules to show, most matched first (the JSON has all).") var top = 20
        @OptionGroup var common: Common

        func validate() throws {
            guard top >= 0 else { throw ValidationError("--top: a count of rules, 0 or more (got \(top))") }
        }

        func run() throws {
            Strait.bootstrapLogging()
            let stats = try Dropper.open(pinDirectory: common.pinDirectory).stats()
            if common.json { return try printJSON(stats) }
            if prometheus { return print(stats.prometheusText(), terminator: "") }
            print("mode \(stats.mode); attached to " + (stats.attachments.isEmpty ? "nothing" : stats.attachments.map { "\($0.interface) (\($0.mode))" }.joined(separator: ", ")) + "\n")
            print(table([["verdict", "action", "packets", "bytes"]] + stats.verdicts.map {
                [$0.verdict, $0.dropped ? "drop" : "pass", String($0.packets), String($0.bytes)]
            }))
            let rules = stats.rules.sorted { $0.packets > $1.packets }
            print("\n" + table([["rule", "packets", "bytes"]] + rules.prefix(top).map { [$0.rule.description, String($0.packets), String($0.bytes)] }))
            if rules.count > top { print("… \(rules.count - top) more rules (--top N, or --json)") }
        }
    }
}

extension XDPMode: ExpressibleByArgument {}
extension DropMode: ExpressibleByArgument {}
