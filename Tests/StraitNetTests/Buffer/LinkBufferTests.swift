import PropertyBased
import Testing

@testable import StraitNet

/// Bytes kept alive by a test for `writeDirect`; counts live instances to check buffers let go.
final class OwnedBytes: @unchecked Sendable {
    nonisolated(unsafe) static var live = 0
    let memory: UnsafeMutableRawBufferPointer
    let count: Int
    init(_ bytes: [UInt8]) {
        count = bytes.count
        memory = .allocate(byteCount: max(bytes.count, 1), alignment: 1)
        memory.copyBytes(from: bytes)
        OwnedBytes.live += 1
    }
    var view: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: memory[0..<count]) }
    deinit {
        memory.deallocate()
        OwnedBytes.live -= 1
    }
}

/// Runs a LinkBuffer and a plain-array reference model through the same operations and checks
/// they agree after each one, and that views handed out stay intact until `release()`.
struct LinkBufferModelRun {
    let buffer = LinkBuffer()
    var readable: [UInt8] = []
    var staged: [UInt8] = []
    var views: [(UnsafeRawBufferPointer, [UInt8])] = []
    var slices: [(LinkBuffer, [UInt8])] = []
    var counter: UInt8 = 0

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in
            counter &+= 1
            return counter
        }
    }

    mutating func apply(_ code: Int) {
        let op = code % 15
        let size = (code / 15) % 6000
        switch op {
        case 0:
            let data = bytes(size)
            buffer.write(data)
            staged += data
        case 1:
            let data = bytes(size)
            let room = buffer.malloc(size)
            #expect(room.count == size)
            room.copyBytes(from: data)
            staged += data
        case 2, 3:
            buffer.flush()
            readable += staged
            staged = []
        case 4:
            let count = min(size, readable.count)
            let view = try! buffer.next(count)
            #expect(Array(view) == Array(readable.prefix(count)))
            views.append((view, Array(view)))
            readable.removeFirst(count)
        case 5:
            let count = min(size, readable.count)
            let view = try! buffer.peek(count)
            #expect(Array(view) == Array(readable.prefix(count)))
            views.append((view, Array(view)))
        case 6:
            let count = min(size, readable.count)
            try! buffer.skip(count)
            readable.removeFirst(count)
        case 7:
            let delimiter = UInt8(truncatingIfNeeded: size)
            let view = buffer.until(delimiter)
            if let position = readable.firstIndex(of: delimiter) {
                #expect(view.map(Array.init) == Array(readable[...position]))
                readable.removeFirst(position + 1)
            } else {
                #expect(view == nil)
            }
        case 8:
            let count = min(size, readable.count)
            #expect(try! buffer.readBinary(count) == Array(readable.prefix(count)))
            readable.removeFirst(count)
        case 9:
            let count = min(size, readable.count)
            let slice = try! buffer.slice(count)
            #expect(slice.readableBytes == count)
            slices.append((slice, Array(readable.prefix(count))))
            readable.removeFirst(count)
        case 10:
            checkViews()
            buffer.release()
            views.removeAll()
        case 11:
            let data = bytes(size)
            let owner = OwnedBytes(data)
            buffer.writeDirect(owner.view, owner: owner)
            staged += data
        case 12:
            let other = LinkBuffer()
            let data = bytes(size)
            other.write(data)
            other.flush()
            buffer.append(other)
            #expect(other.readableBytes == 0)
            staged += data
        case 13:
            if readable.count >= 4 {
                let value: UInt32 = try! buffer.readInteger()
                let expected = readable.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                #expect(value == expected)
                readable.removeFirst(4)
            } else {
                #expect(throws: LinkBufferError.self) { try buffer.readInteger(as: UInt32.self) }
            }
        default:
            // Asking for more than is readable consumes nothing.
            #expect(throws: LinkBufferError.notEnoughData(requested: readable.count + 1, readable: readable.count)) {
                try buffer.next(readable.count + 1)
            }
        }
        #expect(buffer.readableBytes == readable.count)
        #expect(buffer.unflushedBytes == staged.count)
    }

    func checkViews() {
        for (view, expected) in views { #expect(Array(view) == expected) }
        for (slice, expected) in slices {
            #expect(Array(try! slice.peek(slice.readableBytes)) == expected)
        }
    }

    mutating func finish() {
        checkViews()
        buffer.flush()
        readable += staged
        staged = []
        #expect(try! buffer.readBinary(buffer.readableBytes) == readable)
        buffer.release()
    }
}

@Suite("LinkBuffer", .serialized)
struct LinkBufferTests {
    @Test("the empty writeDirect found by the model check stages nothing")
    func emptyWriteDirect() {
        var run = LinkBufferModelRun()
        run.apply(270_011)
        run.finish()
        #expect(run.buffer.unflushedBytes == 0)
    }

    @Test("agrees with a byte-array model over random operation sequences")
    func modelCheck() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...899_999).array(of: 1...120)) { codes in
            var run = LinkBufferModelRun()
            for code in codes { run.apply(code) }
            run.finish()
        }
        #expect(OwnedBytes.live == 0, "borrowed bytes outlived every buffer")
    }

    @Test("a read inside one node is a view into the node; across nodes it is a pooled copy")
    func viewsAndCopies() throws {
        let buffer = LinkBuffer()
        let first = buffer.malloc(LinkBuffer.defaultNodeSize)
        first.initializeMemory(as: UInt8.self, repeating: 1)
        let second = buffer.malloc(10)
        second.initializeMemory(as: UInt8.self, repeating: 2)
        buffer.flush()
        #expect(buffer.segments.count == 2)

        let inside = try buffer.next(100)
        #expect(inside.baseAddress == UnsafeRawPointer(first.baseAddress))
        try buffer.skip(LinkBuffer.defaultNodeSize - 104)
        let across = try buffer.next(8)
        #expect(Array(across) == [1, 1, 1, 1, 2, 2, 2, 2])
        #expect(across.baseAddress != UnsafeRawPointer(first.baseAddress! + LinkBuffer.defaultNodeSize - 4))
        #expect(buffer.copies.count == 1)
        buffer.release()
        #expect(buffer.copies.isEmpty)
        #expect(buffer.segments.count == 1)
    }

    @Test("slices share nodes and survive the original's release")
    func slicesShare() throws {
        let buffer = LinkBuffer()
        buffer.write(string: "hello, world")
        buffer.flush()
        let node = buffer.segments[0].node
        let slice = try buffer.slice(5)
        #expect(slice.segments[0].node === node)
        #expect(node.references.load(ordering: .relaxed) == 2)
        buffer.release()
        // The writer keeps appending to its tail, past the slice's window.
        buffer.write(string: "!!")
        buffer.flush()
        #expect(try slice.readString(5) == "hello")
        #expect(try buffer.readString(9) == ", world!!")
    }

    @Test("a fully read lone tail is reused from its start instead of taking a new node")
    func tailReuse() throws {
        let buffer = LinkBuffer()
        buffer.write(string: "ping")
        buffer.flush()
        let node = buffer.segments[0].node
        _ = try buffer.next(4)
        buffer.release()
        buffer.write(string: "pong")
        buffer.flush()
        #expect(buffer.segments.count == 1 && buffer.segments[0].node === node)
        #expect(buffer.segments[0].start == 0)
    }

    @Test("writeDirect holds the owner until the bytes are released")
    func writeDirectOwnership() throws {
        let before = OwnedBytes.live
        do {
            let buffer = LinkBuffer()
            let owner = OwnedBytes(Array("direct".utf8))
            buffer.writeDirect(owner.view, owner: owner)
            buffer.writeDirect("+static")
            buffer.flush()
            #expect(try buffer.readString(13) == "direct+static")
            #expect(OwnedBytes.live == before + 1)
            buffer.release()
        }
        #expect(OwnedBytes.live == before)
    }
}
