import StraitBPF
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
