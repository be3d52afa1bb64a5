import Foundation
import Testing

@testable import StraitNet

extension Loopback {
@Suite("Where loop threads run")
struct EventLoopGroupTests {
    /// The calling thread's `Cpus_allowed_list` (for example "0-1" or "1"), from /proc/thread-self.
    static func allowedCPUs() -> String {
        let status = (try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") } ?? ""
        return line.split(separator: "\t").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
    }

    /// Each loop's allowed-CPU list, read on the loop's own thread.
    func allowedCPUs(of group: EventLoopGroup) async -> [String] {
        var lists: [String] = []
        for loop in group.loops {
            let answer = Signal<String>()
            loop.execute { answer.send(Self.allowedCPUs()) }
            lists.append(await answer.wait().first ?? "")
        }
        return lists
    }

    /// CPU numbers in a list such as "0-3,6".
    static func cpus(in list: String) -> Set<Int> {
        var cpus = Set<Int>()
        for part in list.split(separator: ",") {
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            if let first = bounds.first { cpus.formUnion(first...(bounds.last ?? first)) }
        }
        return cpus
    }

    @Test("onePerCPU pins loop i to CPU i modulo the cores; anywhere leaves the process's CPUs")
    func placement() async throws {
        let processCPUs = Self.allowedCPUs()
        let cores = EventLoopGroup.coreCount
        let loopCount = cores + 1  // one more than the cores: the last wraps to CPU 0
        let pinned = try EventLoopGroup(loopCount: loopCount, placement: .onePerCPU)
        let pinnedLists = await allowedCPUs(of: pinned)
        pinned.shutdown()
        for (index, list) in pinnedLists.enumerated() {
            let cpu = index % cores
            // A CPU outside this process's cpuset cannot be had: that loop stays as the process is.
            let expected = Self.cpus(in: processCPUs).contains(cpu) ? "\(cpu)" : processCPUs
            #expect(list == expected, "loop \(index)")
        }

        let free = try EventLoopGroup(loopCount: 2)
        let freeLists = await allowedCPUs(of: free)
        free.shutdown()
        #expect(freeLists == [processCPUs, processCPUs])
    }
}
}
