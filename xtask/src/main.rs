//! Concord's task runner: `cargo xtask test`.
fn main() {}
