import StraitBPF
import StraitKernelABI
import StraitDrop
import StraitSystem
import StraitTestSupport
import Testing

@Suite("Drop attachments per network namespace", .serialized, kernelGate)
struct DropNamespaceTests {
    @Test("interfaces named alike in two namespaces attach apart; detaching in one leaves the other attached with its rules")
    func sameNameTwoNamespaces() throws {
        try DropLab.with { lab in
            // A veth pair in the sender's namespace whose first end has the receiver interface's name.
            let name = lab.receiverInterface
            try NetworkNamespace.runIP(["-n", lab.sender.name, "link", "add", name, "type", "veth", "peer", "name", lab.senderInterface + "c"])
            try NetworkNamespace.runIP(["-n", lab.sender.name, "link", "set", name, "up"])
            try lab.dropper.add(DropRule(parsing: lab.blockedIPv4))
            let dropper = lab.dropper
            try lab.sender.run { try dropper.attach(interface: name, mode: .native) }
            let attachments = dropper.attachments()
            #expect(attachments.count == 2)
            #expect(Set(attachments.map(\.netns)) == [try lab.receiver.inode(), try lab.sender.inode()])
            #expect(attachments.allSatisfy { $0.interface == name && $0.live })
            #expect(throws: DropError.self, "the same interface in the same namespace is refused") {
                try lab.sender.run { try dropper.attach(interface: name, mode: .generic) }
            }

            try lab.sender.run { try dropper.detach(interface: name) }
            #expect(dropper.attachments() == [try lab.receiverAttachment(mode: .native, live: true)])
            #expect(try lab.attachedProgramID() != 0, "the receiver's program stays")
            #expect(try dropper.ruleSet().rules == [try DropRule(parsing: lab.blockedIPv4)], "and its rules")
            #expect(throws: DropError.self, "nothing left to detach in the sender's namespace") {
                try lab.sender.run { try dropper.detach(interface: name) }
            }
            try DropTrafficTests.expectBlocked(lab, receiver: lab.receiverIPv4, allowed: lab.allowedIPv4, blocked: lab.blockedIPv4)
        }
    }
}

@Suite("strait drop: loading large and oversized sets", .serialized, kernelGate)
struct DropCapacityTests {
    /// The /32s of 198.18.0.0/15 and beyond, `count` of them, without host bits.
    static func hosts(_ count: Int) -> [DropRule] {
        (0..<count).map { index in
            let address = (198 << 24 | 18 << 16) + index
            return .source(IPPrefix("\(address >> 24).\((address >> 16) & 0xff).\((address >> 8) & 0xff).\(address & 0xff)/32")!)
        }
    }

    @Test("a set over a map's capacity is refused with the capacity message every time, before any map changes")
    func overCapacity() throws {
        try DropLab.with(attach: false) { lab in
            try lab.dropper.load(DropRuleSet(rules: [try DropRule(parsing: "tcp/22")]))
            let oversized = DropRuleSet(rules: Self.hosts(Int(STRAIT_DROP_MAX_PREFIXES) + 1))
            for attempt in 1...2 {
                let error = #expect(throws: DropError.self) { try lab.dropper.load(oversized) }
                #expect(error?.description.contains("one set holds at most \(STRAIT_DROP_MAX_PREFIXES)") == true, "attempt \(attempt): \(String(describing: error))")
            }
            #expect(try lab.dropper.ruleSet().rules == [try DropRule(parsing: "tcp/22")], "the active set is unchanged")
        }
    }

    @Test("100,000 host rules load at once (non-preallocated maps, inserts retried on a transient ENOMEM)")
    func hundredThousandRules() throws {
        try DropLab.with(attach: false) { lab in
            try lab.dropper.load(DropRuleSet(rules: Self.hosts(100_000)))
            #expect(try lab.dropper.ruleSet().rules.count == 100_000)
            try lab.dropper.load(DropRuleSet(rules: Self.hosts(100_000).reversed()))
            #expect(try lab.dropper.ruleSet().rules.count == 100_000)
        }
    }
}
