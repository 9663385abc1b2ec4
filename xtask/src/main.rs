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
//! - [`bench`](mod@bench) runs every benchmark and the relay load generator.
//! - [`bindings`] builds the uniffi bindings and runs their suites;
//!   [`swift`] runs the Swift one in a Debian trixie chroot.
//! - [`npm`] builds the npm package `concord-sync` (`cargo xtask npm`).
//! - [`demo`] builds and runs the todo demo (`cargo xtask demo`).
//! - [`webperf`] the npm package's bundler test and its benchmarks.
//! - [`examples`] builds and runs the Kotlin and Python watch examples
//!   (`cargo xtask example`) and checks the README's quick starts.
#![warn(clippy::missing_docs_in_private_items)]

mod bench;
mod bindings;
mod demo;
mod examples;
mod guard;
mod npm;
mod postgres;
mod process;
mod runner;
mod setup;
mod steps;
mod summary;
mod swift;
mod webperf;

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
             build of sync-core and its no-IO dependency guard, then the
             bindings' suites (c-abi-test, kotlin-test, python-test,
             swift-test; see below) against one release build.
             Every step runs even if an earlier one failed. The last line of
             output is `N passed, N failed`; the exit code is non-zero if
             anything failed.
    setup    Install what the build needs (rustfmt, clippy, the
             wasm32-unknown-unknown target) when missing.
    bench    Run every benchmark, in order: sync-core's criterion benches
             (`cargo bench -p sync-core`), the comparison with yrs,
             automerge and loro (`cargo bench` in benches/compare, its own
             workspace), then `concord-loadgen` against freshly started
             release relays on 127.0.0.1 with temporary data directories;
             before it, the npm package's benchmarks (bindings/npm/bench:
             Node against loro-crdt, automerge and yjs, IndexedDB in
             headless Chromium, download size).
             Takes several minutes; not part of `test`. Results belong in
             docs/BENCHMARKS.md.
    bindings Build the native library (release) and concord-relay, generate
             the Kotlin, Swift and Python code with uniffi into
             bindings/generated/, stage the Python package, build its wheel.
    kotlin-test  `bindings`, then the JUnit suites (Maven) against a real relay:
                 the binding's (installing its jar locally), then the console
                 example's, which also compiles the Kotlin quick start.
    python-test  `bindings`, then the pytest suite on the installed wheel,
                 with the watch example's and the Python quick start's tests.
    swift-test   `bindings`, then `swift test` in a Debian trixie chroot
                 (set up under target/swift-root on first use).
    c-abi-test   `bindings`, then a C program built on the generated header.
    npm      Build the npm package concord-sync in bindings/npm: the
             release wasm32 build of sync-wasm, wasm-bindgen (installed at
             Cargo.lock's version when missing), npm ci, wasm-opt -Oz (npm
             binaryen), tsc. Also installs Debian's chromium and
             chromium-driver for the browser tests when missing. Then
             `npm pack` there.
    demo     Build and run the collaborative todo demo (examples/web-todo):
             the release relay on 127.0.0.1:8787 (data in target/demo),
             the npm package and the Vite build (each only when out of
             date), then print the URL to open in two windows and the
             commands that watch the same room from a terminal (the
             `concord` CLI, `example kotlin`, `example python`). `--port N`
             serves it on port N (default 5173); `--build-only` only builds
             (also the debug `concord` CLI its end-to-end test drives).
             Ctrl-C stops everything it started.
    example kotlin|python [--relay URL] [--room ROOM] [--token TOKEN]
             Build and run a native watch example (examples/kotlin-console,
             examples/python-watch): it prints a room's todos live until
             Ctrl-C. Flags fall back to CONCORD_RELAY, CONCORD_ROOM,
             CONCORD_TOKEN; the local database is CONCORD_DATA or
             target/demo/<kotlin|python>-watch.db. `demo` prints these
             commands for its room.
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
    if command == "demo" {
        return demo::run(&args[1..]);
    }
    if command == "example" {
        return examples::run_example(&args[1..]);
    }
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
        "bindings" => exit(bindings::bindings()),
        "kotlin-test" => exit(bindings::kotlin_test()),
        "python-test" => exit(bindings::python_test()),
        "swift-test" => exit(swift::test()),
        "c-abi-test" => exit(bindings::c_abi_test()),
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

/// The exit code for a command's result, printing its error.
fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
