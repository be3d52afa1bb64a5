import Foundation
import StraitBPF
import StraitDrop
import StraitLimit
import StraitSystem
import StraitTestSupport
import Testing

let kernelGate = ConditionTrait.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.comment))

let mbit = 1_000_000.0

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

    @Test("an aggregate rule holds four connections of one client to one rate, and installs fq")
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

    @Test("an aggregate rule by cgroup covers the cgroup's connections over IPv6")
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

    @Test("removing the last rules restores the default qdisc and leaves nothing attached or pinned")
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
}
