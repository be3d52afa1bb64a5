// The fixtures tests share with `strait bench soak` and `strait bench steer` (TestSocket,
// PatternStream, HostilePeers, TestCgroup, RawSocket…) live in StraitBenchSupport, so the
// benchmarks need no test target; every test that imports StraitTestSupport sees them.
@_exported import StraitBenchSupport
