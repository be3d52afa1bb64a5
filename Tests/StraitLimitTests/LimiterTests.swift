import Foundation
import StraitBPF
import StraitDrop
@testable import StraitLimit
import StraitKernelABI
import CLibBPF
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

let mbit = 1_000_000.0
let fairQueueGate = ConditionTrait.enabled(if: TrafficLab.fairQueueAvailable, "this kernel has no fq qdisc (CONFIG_NET_SCH_FQ): aggregate limits cannot hold packets here")

@Suite("StraitLimit: rates and selectors")
struct LimitRateTests {
    @Test("rates parse in tc's units, decimal, and print back")
    func parsing() {
        #expect(LimitRate(parsing: "100mbit")?.bitsPerSecond == 100_000_000)
        #expect(LimitRate(parsing: "1.5Gbit/s")?.bitsPerSecond == 1_500_000_000)
        #expect(LimitRate(parsing: "250kbit")?.bitsPerSecond == 250_000)
        #expect(LimitRate(parsing: "10mbps")?.bitsPerSecond == 10_000_000)
        #expect(LimitRate(parsing: "8000")?.bitsPerSecond == 8000)
        for bad in ["", "0", "-5mbit", "fast", "1tbit"] { #expect(LimitRate(parsing: bad) == nil, "\(bad)") }
        #expect(LimitRate(bitsPerSecond: 100_000_000).description == "100 Mbit/s")
        #expect(LimitRate(bitsPerSecond: 1_500_000_000).description == "1.5 Gbit/s")
    }

    @Test("selectors reject what the kernel could not match")
    func selectors() throws {
        #expect(throws: LimitError.self) { try LimitSelector.connection(cgroupID: 1, localPort: 80, remotePort: 81) }
        #expect(throws: LimitError.self) { try LimitSelector.aggregate(interface: "eth0") }
        #expect(throws: LimitError.self) { try LimitSelector.aggregate(interface: "eth0", cgroupID: 1, remote: IPPrefix("198.18.0.0/15")) }
        #expect(try LimitSelector.aggregate(interface: "eth0", remote: IPPrefix("198.18.0.0/15")).description == "aggregate on eth0, remote 198.18.0.0/15")
    }
}

@Suite("StraitLimit: pacing and EDT on a veth", .serialized, kernelGate)
struct LimiterTests {
    @Test("a per-connection rule paces one TCP connection to about its rate (loose bound over 3 s)")
    func perConnectionPacing() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let sink = try Sink(lab: lab, ipv6: false)
            defer { sink.stop() }
            try limiter.set(.connection(cgroupID: lab.cgroupID, remotePort: sink.port), rate: LimitRate(bitsPerSecond: 100_000_000))
            #expect(try lab.senderRootQdisc().contains("noqueue"), "per-connection pacing needs no qdisc: TCP paces itself")
            let flood = try Flood(lab: lab, to: sink, ipv6: false, connections: 1)
            defer { flood.stop() }
            let rate = sink.rate(seconds: 3)
            #expect(rate <= 1.2 * 100 * mbit && rate >= 0.5 * 100 * mbit, "achieved \(rate / mbit) Mbit/s for 100 Mbit/s")
            let stats = try limiter.stats()
            #expect(stats.rules.first?.sockets == 1, "the rule set the pacing rate of one socket")
            #expect(stats.attachments.cgroups == [lab.fixture.cgroup.path])

            let removed = try limiter.remove(.connection(cgroupID: lab.cgroupID, remotePort: sink.port), grace: 1)
            #expect(removed.removed && removed.nothingLeft)
            #expect(try lab.fixture.cgroup.attachedProgramIDs().isEmpty, "nothing attached")
            #expect(!BPFFS.exists(lab.pins), "nothing pinned")
            let unpaced = sink.rate(warmUp: 0.2, seconds: 1)
            #expect(unpaced > 1.5 * 100 * mbit, "the busy connection went back to unlimited during the grace period: \(unpaced / mbit) Mbit/s")
        }
    }

    @Test("changing a rule's rate reaches the established connection without a reload; removing it unpaces")
    func ruleChangeTakesEffect() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let sink = try Sink(lab: lab, ipv6: true)
            defer { sink.stop() }
            let selector = try LimitSelector.connection(cgroupID: lab.cgroupID, remote: IPPrefix("2001:db8::/32"))
            try limiter.set(selector, rate: LimitRate(bitsPerSecond: 50_000_000))
            let flood = try Flood(lab: lab, to: sink, ipv6: true, connections: 1)
            defer { flood.stop() }
            let slow = sink.rate(seconds: 2)
            #expect(slow <= 1.2 * 50 * mbit && slow >= 0.5 * 50 * mbit, "achieved \(slow / mbit) Mbit/s for 50 Mbit/s")
            let outcome = try limiter.set(selector, rate: LimitRate(bitsPerSecond: 200_000_000))
            #expect(!outcome.created)
            let fast = sink.rate(seconds: 2)
            #expect(fast <= 1.2 * 200 * mbit && fast >= 0.5 * 200 * mbit, "after the change: \(fast / mbit) Mbit/s for 200 Mbit/s")
            #expect(try limiter.stats().rules.first?.sockets == 2, "set at establishment, set again at the first RTT callback after the change")
        }
    }

    @Test("an aggregate rule holds four connections of one client to one rate, and installs fq", fairQueueGate)
    func aggregateAcrossConnections() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let sink = try Sink(lab: lab, ipv6: false)
            defer { sink.stop() }
            let selector = try LimitSelector.aggregate(interface: lab.pair.senderInterface, remote: IPPrefix(lab.pair.receiverIPv4 + "/32"))
            let outcome = try lab.inSender { try limiter.set(selector, rate: LimitRate(bitsPerSecond: 100_000_000)) }
            #expect(outcome.created && outcome.installedFairQueue)
            #expect(try lab.senderRootQdisc().contains("qdisc fq "))
            let flood = try Flood(lab: lab, to: sink, ipv6: false, connections: 4)
            defer { flood.stop() }
            let rate = sink.rate(seconds: 3)
            #expect(rate <= 1.2 * 100 * mbit && rate >= 0.5 * 100 * mbit, "four connections together: \(rate / mbit) Mbit/s for 100 Mbit/s")
            let counts = try #require(try limiter.stats().rules.first)
            #expect(counts.packets > 0 && counts.delayed > 0, "packets were given later departure times")
        }
    }

    @Test("an aggregate rule by cgroup covers the cgroup's connections over IPv6", fairQueueGate)
    func aggregateByCgroup() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let sink = try Sink(lab: lab, ipv6: true)
            defer { sink.stop() }
            let selector = try LimitSelector.aggregate(interface: lab.pair.senderInterface, cgroupID: lab.cgroupID)
            try lab.inSender { _ = try limiter.set(selector, rate: LimitRate(bitsPerSecond: 80_000_000)) }
            let flood = try Flood(lab: lab, to: sink, ipv6: true, connections: 3)
            defer { flood.stop() }
            let rate = sink.rate(seconds: 3)
            #expect(rate <= 1.2 * 80 * mbit && rate >= 0.5 * 80 * mbit, "three connections together: \(rate / mbit) Mbit/s for 80 Mbit/s")
        }
    }

    @Test("removing the last rules restores the default qdisc and leaves nothing attached or pinned", fairQueueGate)
    func removeRestores() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let interface = lab.pair.senderInterface
            let aggregate = try LimitSelector.aggregate(interface: interface, remote: IPPrefix("198.18.0.0/15"))
            let connection = try LimitSelector.connection(cgroupID: lab.cgroupID, localPort: 8080)
            try lab.inSender { _ = try limiter.set(aggregate, rate: LimitRate(bitsPerSecond: 10_000_000)) }
            try limiter.set(connection, rate: LimitRate(bitsPerSecond: 10_000_000))
            let ifindex = try lab.inSender { try NetworkInterface(named: interface).index }
            #expect(try lab.inSender { try attachedTCXProgramIDs(ifindex: ifindex, direction: .egress) }.count == 1)
            #expect(try lab.fixture.cgroup.attachedProgramIDs().count == 1)
            #expect(try limiter.rulesList().map(\.selector) == [connection, aggregate])

            let first = try lab.inSender { try limiter.remove(aggregate) }
            #expect(first.removed && first.restoredQdisc == interface && !first.nothingLeft)
            #expect(try lab.senderRootQdisc().contains("noqueue"))
            #expect(try lab.inSender { try attachedTCXProgramIDs(ifindex: ifindex, direction: .egress) }.isEmpty)
            #expect(Limiter.isLoaded(pinDirectory: lab.pins))

            let last = try limiter.remove(connection, grace: 0)
            #expect(last.removed && last.nothingLeft)
            #expect(try lab.fixture.cgroup.attachedProgramIDs().isEmpty)
            #expect(!BPFFS.exists(lab.pins), "nothing pinned")
        }
    }

    @Test("a rule that would throttle the SSH peer below the floor is refused; --force skips the check")
    func lockOutGuard() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let ssh = ProtectedSource(address: IPAddress("198.18.200.9")!, tcpPort: 22, origin: "test")
            let byPrefix = try LimitSelector.connection(cgroupID: lab.cgroupID, remote: IPPrefix("198.18.200.0/24"))
            let byPort = try LimitSelector.connection(cgroupID: lab.cgroupID, localPort: 22)
            for selector in [byPrefix, byPort] {
                #expect(throws: LimitError.self) { try limiter.set(selector, rate: LimitRate(bitsPerSecond: 100_000), protecting: [ssh]) }
            }
            #expect(try limiter.rulesList().isEmpty, "nothing was stored")
            try limiter.set(byPrefix, rate: LimitRate(bitsPerSecond: 5_000_000), protecting: [ssh])
            try limiter.set(byPort, rate: LimitRate(bitsPerSecond: 100_000), protecting: [])
            #expect(try limiter.rulesList().count == 2)
        }
    }

    @Test("without fq in the kernel an aggregate rule is refused with advice, and nothing is attached or changed",
          .enabled(if: !TrafficLab.fairQueueAvailable, "this kernel has fq; the aggregate tests above cover it"))
    func aggregateWithoutFairQueue() throws {
        try TrafficLab.with { lab in
            let limiter = try Limiter.open(pinDirectory: lab.pins, create: true)
            let interface = lab.pair.senderInterface
            let selector = try LimitSelector.aggregate(interface: interface, remote: IPPrefix(lab.pair.receiverIPv4 + "/32"))
            #expect {
                try lab.inSender { _ = try limiter.set(selector, rate: LimitRate(bitsPerSecond: 100_000_000)) }
            } throws: { error in
                guard case LimitError.fairQueueUnavailable = error else { return false }
                return "\(error)".contains("CONFIG_NET_SCH_FQ")
            }
            let ifindex = try lab.inSender { try NetworkInterface(named: interface).index }
            #expect(try lab.inSender { try attachedTCXProgramIDs(ifindex: ifindex, direction: .egress) }.isEmpty)
            #expect(try lab.senderRootQdisc().contains("noqueue"))
            #expect(try limiter.rulesList().isEmpty)
        }
    }

    @Test("the EDT program gives packets of several connections to one client departures one length-at-the-rate apart, and drops past the horizon")
    func departureSchedule() throws {
        try TestCgroup.with { fixture in
            let pins = fixture.pinDirectory + "/limit"
            let limiter = try Limiter.open(pinDirectory: pins, create: true)
            defer { try? Limiter.removeAll(pinDirectory: pins) }
            // BPF_PROG_TEST_RUN sends the packet out of loopback; nothing is attached anywhere.
            let selector = try LimitSelector.aggregate(interface: "lo", remote: IPPrefix("198.18.9.2/32"))
            let bytesPerSecond: UInt64 = 12_500  // 100 kbit/s: 80 ms per 1000-byte packet, far above a syscall's jitter
            try limiter.storeRule(Limiter.slot(of: selector), strait_limit_rule(rate_bytes_per_second: bytesPerSecond, scope: UInt32(STRAIT_LIMIT_AGGREGATE.rawValue), reserved: 0))
            let program = try BPFProgram.open(pinned: pins + "/" + Limiter.egressProgram)
            let gap = UInt64(1000) * 1_000_000_000 / bytesPerSecond

            let other = try runEgress(program, frame: tcpFrame(to: [198, 18, 9, 3], sourcePort: 40_000, length: 1000))
            #expect(other.verdict == -1 && other.tstamp == 0, "traffic to another client is untouched")

            var scheduled: [UInt64] = []
            var dropped = 0
            for index in 0..<40 {
                let run = try runEgress(program, frame: tcpFrame(to: [198, 18, 9, 2], sourcePort: UInt16(40_000 + index % 4), length: 1000))
                if run.verdict == 2 { dropped += 1; continue }  // TC_ACT_SHOT
                #expect(run.verdict == -1 && dropped == 0, "packet \(index): passed after a drop")
                if index > 0 { scheduled.append(run.tstamp) }
            }
            for (earlier, later) in zip(scheduled, scheduled.dropFirst()) {
                #expect(later - earlier == gap, "departures of consecutive packets (four connections) are one gap apart")
            }
            // The 2 s horizon holds 2 s ÷ 80 ms = 25 packets beyond the first, which leaves at once.
            #expect((24...26).contains(scheduled.count), "\(scheduled.count) packets scheduled before the horizon")
            #expect(dropped == 39 - scheduled.count)
            let counts = try #require(try limiter.stats().rules.first)
            #expect(counts.packets == 40 && counts.delayed == UInt64(scheduled.count) && counts.dropped == UInt64(dropped))
        }
    }
}

/// Runs the egress program once on `frame` with a zero `skb->tstamp`; returns its verdict and the
/// departure time it wrote (0 when it left the packet alone).
func runEgress(_ program: BPFProgram, frame: [UInt8]) throws -> (verdict: Int32, tstamp: UInt64) {
    var context = __sk_buff()
    var contextOut = __sk_buff()
    var output = [UInt8](repeating: 0, count: frame.count + 256)
    var options = bpf_test_run_opts()
    options.sz = MemoryLayout<bpf_test_run_opts>.size
    let result = frame.withUnsafeBytes { input in
        output.withUnsafeMutableBytes { out in
            withUnsafeMutableBytes(of: &context) { contextIn in
                withUnsafeMutableBytes(of: &contextOut) { contextOutBytes in
                    options.data_in = input.baseAddress
                    options.data_size_in = UInt32(input.count)
                    options.data_out = out.baseAddress
                    options.data_size_out = UInt32(out.count)
                    options.ctx_in = UnsafeRawPointer(contextIn.baseAddress)
                    options.ctx_size_in = UInt32(contextIn.count)
                    options.ctx_out = contextOutBytes.baseAddress
                    options.ctx_size_out = UInt32(contextOutBytes.count)
                    return bpf_prog_test_run_opts(program.fileDescriptor, &options)
                }
            }
        }
    }
    try #require(result == 0, "bpf_prog_test_run failed with errno \(-result)")
    return (Int32(bitPattern: options.retval), contextOut.tstamp)
}

/// An Ethernet + IPv4 + TCP frame of `length` bytes from 198.18.9.1 to `destination`.
func tcpFrame(to destination: [UInt8], sourcePort: UInt16, length: Int) -> [UInt8] {
    var frame = [UInt8](repeating: 0, count: length)
    frame[12] = 0x08  // EtherType IPv4
    frame[14] = 0x45
    let total = UInt16(length - 14)
    frame[16] = UInt8(total >> 8)
    frame[17] = UInt8(total & 0xff)
    frame[22] = 64
    frame[23] = 6  // TCP
    frame.replaceSubrange(26..<30, with: [198, 18, 9, 1])
    frame.replaceSubrange(30..<34, with: destination)
    frame[34] = UInt8(sourcePort >> 8)
    frame[35] = UInt8(sourcePort & 0xff)
    frame[36] = 0x1f
    frame[37] = 0x90
    frame[46] = 0x50
    return frame
}
