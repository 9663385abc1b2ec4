//! Concord's task runner, the project's single entry point: `cargo xtask <command>`.
//!
//! `cargo xtask` is an alias (see `.cargo/config.toml`) for
//! `cargo run --quiet --package xtask --`. This crate uses only the standard
//! library so that it builds in a few seconds on a fresh machine.
//!
//! - [`setup`] installs what the build needs, idempotently.
//! - [`steps`] lists what `cargo xtask test` runs, as data.
//! - [`runner`] runs those steps, times them and prints the summary.
//! - [`summary`] parses test counts and adds up the final tally.
//! - [`guard`] checks `sync-core`'s dependency tree for crates that do IO.
//! - [`bench`] runs every benchmark and the relay load generator.
//! - [`npm`] builds the npm package `concord-sync` (`cargo xtask npm`).
#![warn(clippy::missing_docs_in_private_items)]

mod bench;
mod guard;
mod npm;
mod runner;
mod setup;
mod steps;
mod summary;

use std::process::ExitCode;

/// Usage text printed by `cargo xtask help`.
const HELP: &str = "\
Concord task runner

USAGE:
    cargo xtask <COMMAND>

COMMANDS:
    test     Set up, then run every check: fmt, clippy (also sync-core with
             its test-only `buggify` feature), tests (with doctests), the
             simulation's fault switches (each must be caught), the wasm32
             build of sync-core and its no-IO dependency guard.
             Every step runs even if an earlier one failed. The last line of
             output is `N passed, N failed`; the exit code is non-zero if
             anything failed.
    setup    Install what the build needs (rustfmt, clippy, the
             wasm32-unknown-unknown target) when missing.
    bench    Run every benchmark, in order: sync-core's criterion benches
             (`cargo bench -p sync-core`), the comparison with yrs,
             automerge and loro (`cargo bench` in benches/compare, its own
             workspace), then `concord-loadgen` against freshly started
             release relays on 127.0.0.1 with temporary data directories.
             Takes several minutes; not part of `test`. Results belong in
             docs/BENCHMARKS.md.
    npm      Build the npm package concord-sync in bindings/npm: the
             release wasm32 build of sync-wasm, wasm-bindgen (installed at
             Cargo.lock's version when missing), npm ci, wasm-opt -Oz (npm
             binaryen), tsc. Also installs Debian's chromium and
             chromium-driver for the browser tests when missing. Then
             `npm pack` there.
    help     Print this message.

ENVIRONMENT:
    CARGO    The cargo binary to run (default: `cargo` on PATH).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    };
    if args.len() > 1 {
        eprintln!(
            "error: `{command}` takes no arguments, got: {}",
            args[1..].join(" ")
        );
        return ExitCode::from(2);
    }
    match command.as_str() {
        "test" => runner::run_all(steps::TEST),
        "setup" => match setup::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        "bench" => bench::run(),
        "npm" => match npm::build().and_then(|()| npm::ensure_chromium()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: unknown command `{other}`\n");
            eprint!("{HELP}");
            ExitCode::from(2)
        }
    }
}
