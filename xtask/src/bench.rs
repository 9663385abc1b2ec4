//! `cargo xtask bench`: the benchmark commands of [`crate::steps::BENCH`],
//! then the relay load generator against the release relay just built.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::runner;
use crate::steps;

/// Runs every benchmark in order; stops at the first failure.
pub(crate) fn run() -> ExitCode {
    for cmd in steps::BENCH {
        if runner::run_inherited(cmd) != ExitCode::SUCCESS {
            return ExitCode::FAILURE;
        }
    }
    let bin = target_dir().join("release");
    let loadgen = bin.join("concord-loadgen");
    let relay = bin.join("concord-relay");
    println!("\n$ {} --relay {}", loadgen.display(), relay.display());
    match Command::new(&loadgen)
        .arg("--relay")
        .arg(&relay)
        .current_dir(runner::workspace_root())
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("error: concord-loadgen failed ({status})");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: could not run {}: {error}", loadgen.display());
            ExitCode::FAILURE
        }
    }
}

/// Where cargo puts the workspace's binaries: `$CARGO_TARGET_DIR` (relative
/// to the workspace root) or `target/`.
fn target_dir() -> PathBuf {
    let root = runner::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
