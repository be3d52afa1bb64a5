import Foundation
import StraitSystem

extension NetworkNamespace {
    /// Joins two test namespaces with a veth pair and addresses them (subnet S):
    ///
    ///     receiver  RECEIVER-IF  198.18.S.1 / 2001:db8:S::1   <— veth —>   SENDER-IF  .2 and .3 / ::2 and ::3  sender
    ///
    /// Both ends are up on return. Deleting either namespace removes the pair.
    public static func wireVethPair(receiver: NetworkNamespace, sender: NetworkNamespace, receiverInterface: String, senderInterface: String, subnet: Int) throws {
        try runIP(["-n", receiver.name, "link", "add", receiverInterface, "type", "veth", "peer", "name", senderInterface, "netns", sender.name])
        try runIP(["-n", receiver.name, "addr", "add", "198.18.\(subnet).1/24", "dev", receiverInterface])
        try runIP(["-n", receiver.name, "addr", "add", "2001:db8:\(subnet)::1/64", "dev", receiverInterface, "nodad"])
        for host in [2, 3] {
            try runIP(["-n", sender.name, "addr", "add", "198.18.\(subnet).\(host)/24", "dev", senderInterface])
            try runIP(["-n", sender.name, "addr", "add", "2001:db8:\(subnet)::\(host)/64", "dev", senderInterface, "nodad"])
        }
        try runIP(["-n", receiver.name, "link", "set", receiverInterface, "up"])
        try runIP(["-n", sender.name, "link", "set", senderInterface, "up"])
    }
}

/// Executables of this build, found beside the test bundle (`.build/debug/strait` for `swift test`).
public enum BuiltProducts {
    /// The path of the executable product `name`, or nil when it was not built.
    public static func executable(_ name: String) -> String? {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }
}
