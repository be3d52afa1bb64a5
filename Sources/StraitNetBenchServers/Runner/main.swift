// Runs the HTTP benchmark from the command line until `strait bench net` calls it:
// straitnet-bench [SECONDS] [CONNECTIONS,...] [--json]
import Foundation
import StraitNetBench

let arguments = CommandLine.arguments.dropFirst()
var benchmark = HTTPBenchmark(binaries: URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
let numbers = arguments.filter { !$0.hasPrefix("--") }
if let seconds = numbers.first.flatMap({ Int($0) }) { benchmark.seconds = seconds }
if numbers.count > 1 { benchmark.connections = numbers[numbers.index(after: numbers.startIndex)].split(separator: ",").compactMap { Int($0) } }
let rows = try benchmark.run()
print(arguments.contains("--json") ? HTTPBenchmark.json(rows) : HTTPBenchmark.table(rows))
