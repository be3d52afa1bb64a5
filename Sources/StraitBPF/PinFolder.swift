import Foundation
import StraitSystem

/// One feature's folder of bpffs pins, laid out the same way by every feature whose kernel state
/// outlives the command that made it (`strait drop`, `strait limit`, the agent's lb):
///
///     <path>/<map>        one pin per map
///     <path>/<program>    programs, pinned last: their presence says the folder is complete
///     <path>/links/<name> BPF links, each detached when its pin is removed and no descriptor is left
///
/// A plain value (the path and the advice to give when pins are missing); it holds no descriptor.
/// The objects belong to the kernel through their pins: ``populate(object:maps:programs:initialize:)``
/// makes them, ``removeAll()`` detaches every link and unpins everything.
public struct PinFolder: Sendable, Equatable {
    /// The folder in bpffs.
    public let path: String
    /// What to do when a pin is missing (the pins were made by another version, or half-removed):
    /// the end of ``BPFError/unsupported(_:)``'s message.
    public let repairAdvice: String

    /// A folder at `path`; nothing is made until ``populate(object:maps:programs:initialize:)``.
    public init(path: String, repairAdvice: String) {
        self.path = path
        self.repairAdvice = repairAdvice
    }

    /// The pin of `name` in the folder.
    public func path(_ name: String) -> String { path + "/" + name }

    /// The folder of pinned links.
    public var linksPath: String { path("links") }

    /// Whether every one of `names` is pinned (one `stat` each): with the programs, which are pinned
    /// last, whether the folder is complete.
    public func contains(_ names: [String]) -> Bool { names.allSatisfy { BPFFS.exists(path($0)) } }

    /// Opens the pinned map `name`, or throws with ``repairAdvice`` when it is missing.
    public func map(_ name: String) throws(BPFError) -> BPFMap {
        let pin = path(name)
        guard BPFFS.exists(pin) else { throw .unsupported("\(pin) is missing: the pins were made by another version of Strait. \(repairAdvice)") }
        return try BPFMap.open(pinned: pin)
    }

    /// Makes the folder from a loaded object: mounts bpffs if needed, clears what a half-made earlier
    /// attempt left, pins `maps` under their names, runs `initialize` (to write first values through
    /// the pinned maps), then pins `programs` (each program's name and its pin name) in order, the
    /// last one last. On any failure everything pinned is removed again, so a folder is complete or
    /// absent. The caller still owns `object`.
    public func populate(object: BPFObject, maps: [String], programs: [(name: String, pin: String)], initialize: () throws -> Void = {}) throws {
        try BPFFS.ensureMounted()
        try BPFFS.removeTree(path)
        try BPFFS.makeDirectory(linksPath)
        do {
            for name in maps { try object.map(name).pin(at: path(name)) }
            try initialize()
            for program in programs { try object.program(program.name).pin(at: path(program.pin)) }
        } catch {
            try? BPFFS.removeTree(path)
            throw error
        }
    }

    /// Names of the pinned links (empty when there is no folder).
    public func linkNames() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: linksPath)) ?? []).sorted()
    }

    /// Detaches every pinned link (at once, even while another process holds it) and removes the
    /// folder with everything pinned in it, whatever its state: for teardown, and for what a crashed
    /// run left. A missing folder is fine.
    public func removeAll() throws(BPFError) {
        for name in linkNames() { try? BPFLink.open(pinned: linksPath + "/" + name).detach() }
        try BPFFS.removeTree(path)
    }

    /// Runs `body` holding the folder's `flock`, so that changes from two commands never interleave.
    public func locked<T>(_ body: () throws -> T) throws -> T { try DirectoryLock.holding(path, body) }
}
