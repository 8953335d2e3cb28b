//! Benchmarks of the framework; the load generator and the gRPC comparison come with the
//! benchmark issue. `examples/latency` measures sequential latency meanwhile.
