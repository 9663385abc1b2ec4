//! Replica benchmarks (filled in below).
fn main() {}
