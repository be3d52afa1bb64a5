import Foundation
import StraitSystem
import Synchronization
import Testing

@testable import StraitNet

#if canImport(Glibc)
import Glibc
#endif

/// Whether `fd` names an open descriptor of this process.
private func isOpen(_ fd: CInt) -> Bool { fcntl(fd, F_GETFD) >= 0 }

/// The socket inode `/proc/net/unix` lists for a Unix socket listening at `path` (under the name
/// it was bound to: an offer binds beside `path`, then renames).
private func socketInode(listeningAt path: String) -> String? {
    let table = (try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? ""
    // Num RefCount Protocol Flags Type St Inode Path
    for line in table.split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count == 8 && (fields[7] == path || fields[7].hasPrefix(path + ".")) { return String(fields[6]) }
    }
    return nil
}

/// How many of this process's descriptors refer to the socket with `inode`.
private func descriptors(ofSocket inode: String) -> Int {
    openDescriptors().filter { $0.hasSuffix("socket:[\(inode)]") }.count
}

extension Loopback {
@Suite("Owned descriptors and the hand-over's ownership")
struct OwnedDescriptorTests {
    @Test("an owned descriptor closes when dropped, never after take(), and duplicates own their own")
    func ownedDescriptorCloses() throws {
        let pipe = try RelayCall.pipe(size: 4096).take()
        var dropped = OwnedDescriptor(taking: pipe.read) as OwnedDescriptor?
        #expect(isOpen(pipe.read))
        dropped = nil
        #expect(!isOpen(pipe.read), "dropping the owner closed it")
        _ = consume dropped

        let kept = OwnedDescriptor(taking: pipe.write)
        let copy = try kept.duplicate()
        let copyNumber = copy.rawValue
        #expect(copyNumber != pipe.write && isOpen(copyNumber))
        copy.close()
        #expect(!isOpen(copyNumber) && isOpen(pipe.write), "closing the duplicate leaves the original")
        let raw = kept.take()
        #expect(isOpen(raw), "take() hands the number on without closing it")
        closeDescriptor(raw)
    }

    @Test("a list of owned descriptors closes what was not taken out of it, in order")
    func ownedDescriptorsClose() throws {
        let first = try RelayCall.pipe(size: 4096).take(), second = try RelayCall.pipe(size: 4096).take()
        var list = OwnedDescriptors(taking: [first.read, first.write, second.read, second.write])
        #expect(list.count == 4 && list.rawValues == [first.read, first.write, second.read, second.write])
        guard let head = list.takeFirst() else {
            Issue.record("takeFirst() found nothing")
            return
        }
        #expect(head.rawValue == first.read)
        let pair = list.takeFirst(2)
        #expect(pair.rawValues == [first.write, second.read] && list.rawValues == [second.write])
        list = OwnedDescriptors()
        #expect(!isOpen(second.write), "replacing the list closed what it held")
        let bare = pair.takeAll()  // consumes the list, which then closes nothing
        #expect(bare.allSatisfy(isOpen), "takeAll hands every number on")
        bare.forEach(closeDescriptor)
        #expect(isOpen(head.rawValue))
        _ = consume head
        #expect(!isOpen(first.read))
    }

    @Test("a receipt nobody takes from closes every socket it received; once confirmed, the old offer holds no descriptor of the offer socket")
    func handOverOwnership() throws {
        let folder = "/tmp/" + "strait-owned-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/offer.sock"
        let listener = try Listener.tcp(.loopback())
        defer { listener.close() }
        let stopped = Mutex(false)
        let offer = try ListenerHandOver.Offer(
            path: path, package: { ListenerHandOver.Package(listeners: [listener.fd], note: "one") },
            stopAccepting: { stopped.withLock { $0 = true } })
        defer { offer.close() }
        let inode = try #require(socketInode(listeningAt: path))
        #expect(descriptors(ofSocket: inode) == 1, "the offer's own descriptor")

        let before = descriptorSnapshot()
        do {
            let abandoned = try ListenerHandOver.take(from: path)
            #expect(abandoned.listenerDescriptors.count == 1 && abandoned.note == "one")
            #expect(descriptors(ofSocket: inode) == 2, "the receipt holds the offer socket too")
        }
        // The offer's thread closes its end of the control connection once it sees ours go.
        let deadline = ContinuousClock.now + .seconds(5)
        while !descriptorsOpened(since: before).isEmpty && ContinuousClock.now < deadline { usleep(5_000) }
        #expect(descriptorsOpened(since: before).isEmpty, "the dropped receipt closed its listener, control connection and offer socket")
        #expect(offer.outcome == nil && !stopped.withLock { $0 }, "still offering")

        let receipt = try ListenerHandOver.take(from: path)
        let adopted = try receipt.adoptListeners()
        defer { adopted.forEach { $0.close() } }
        try receipt.confirm()
        #expect(offer.handedOver && stopped.withLock { $0 })
        #expect(descriptors(ofSocket: inode) == 1, "only the successor's receipt holds the offer socket: the old offer closed its copy on confirmation")
        let successor = try ListenerHandOver.Offer(
            path: path, continuing: receipt, package: { ListenerHandOver.Package(listeners: adopted.map(\.fd)) }, stopAccepting: {})
        defer { successor.close() }
        #expect(try ListenerHandOver.owner(of: path) == getpid())
        #expect(descriptors(ofSocket: inode) == 1, "the continuing offer took the receipt's descriptor")
    }

    @Test("a failed successor recorded by the offer is in its answer to `who`")
    func failedSuccessorInStatus() throws {
        let folder = "/tmp/" + "strait-owned-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/offer.sock"
        let offer = try ListenerHandOver.Offer(path: path, package: { ListenerHandOver.Package(listeners: []) }, stopAccepting: {})
        defer { offer.close() }
        #expect(try ListenerHandOver.status(of: path) == .init(pid: getpid(), failedSuccessors: 0, lastFailure: ""))
        offer.recordFailedSuccessor("exited with status 1")
        offer.recordFailedSuccessor("exited with status 2")
        #expect(try ListenerHandOver.status(of: path) == .init(pid: getpid(), failedSuccessors: 2, lastFailure: "exited with status 2"))
        #expect(try ListenerHandOver.owner(of: path) == getpid())
    }
}
}
