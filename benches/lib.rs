//! Benchmarks only: see `benches/bench_main.rs` and `README.md`.
