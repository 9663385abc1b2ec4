//! What `cargo xtask test` runs, as data.
//!
//! To add a suite (wasm browser tests, Kotlin, Python, relay end-to-end), add a
//! [`Step`] to [`TEST`]. A suite whose output has test counts uses
//! [`Check::Tests`] with a parser from [`crate::summary`]; any other command
//! uses [`Check::ExitStatus`] and counts as one pass or one failure.

use crate::npm;
use crate::summary::{self, Counts};

/// One step of a run: a name for the report and what to do.
pub(crate) struct Step {
    /// Short name shown in headers and in the final report.
    pub(crate) name: &'static str,
    /// What the step does and how its result is judged.
    pub(crate) check: Check,
}

/// A command line, run from the workspace root unless `dir` says otherwise.
pub(crate) struct Cmd {
    /// The program to run.
    pub(crate) program: Program,
    /// Its arguments.
    pub(crate) args: &'static [&'static str],
    /// Working directory relative to the workspace root (`None`: the root).
    pub(crate) dir: Option<&'static str>,
}

/// Which binary a [`Cmd`] runs.
pub(crate) enum Program {
    /// Cargo: `$CARGO` if set, else `cargo` on PATH.
    Cargo,
    /// Any other tool, looked up on PATH (e.g. `mvn`, `python3`, `npm`).
    #[allow(dead_code, reason = "for suites added later: Kotlin, Python, npm")]
    Tool(&'static str),
}

/// How a step is run and judged.
pub(crate) enum Check {
    /// The idempotent installs of [`crate::setup`]; one pass or one failure.
    Setup,
    /// Run the command with inherited output; one pass if it exits with 0,
    /// else one failure.
    ExitStatus(Cmd),
    /// Run the command, stream its stdout to the terminal while capturing it,
    /// and count tests with the parser. A failed run without failed tests
    /// (a compile error, a crash) counts as one failure; a passing run whose
    /// output has no counts counts as one pass.
    Tests(Cmd, fn(&str) -> Option<Counts>),
    /// Run a `cargo tree --prefix none` command for `package` and fail if any
    /// crate in it matches one of `forbidden` (see [`crate::guard`]).
    ForbidDeps {
        /// The `cargo tree` command.
        cmd: Cmd,
        /// The root package, left out of the list of dependencies.
        package: &'static str,
        /// Forbidden crate names; a trailing `*` matches a prefix.
        forbidden: &'static [&'static str],
    },
}

/// Crates that do IO, read clocks or pick randomness, or tie the core to one
/// host: none of them may appear in `sync-core`'s normal dependency tree.
/// `-` and `_` are equivalent; a trailing `*` matches a prefix.
pub(crate) const NO_IO_FORBIDDEN: &[&str] = &[
    // async runtimes and sockets
    "tokio",
    "tokio-*",
    "mio",
    "socket2",
    "async-std",
    "smol",
    // host bindings
    "wasm-bindgen",
    "wasm-bindgen-*",
    "web-sys",
    "js-sys",
    "uniffi",
    "uniffi_*",
    // storage
    "rusqlite",
    "libsqlite3-sys",
    "indexed_db_futures",
    // randomness
    "getrandom",
    "rand",
    // clocks
    "chrono",
    "time",
    "instant",
    "web-time",
];

/// The steps of `cargo xtask test`, in order.
pub(crate) const TEST: &[Step] = &[
    Step {
        name: "setup",
        check: Check::Setup,
    },
    Step {
        name: "fmt",
        check: Check::ExitStatus(cargo(&["fmt", "--all", "--", "--check"])),
    },
    Step {
        name: "clippy",
        check: Check::ExitStatus(cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])),
    },
    Step {
        name: "clippy buggify",
        // sync-core's fault-switch hooks only compile with the feature.
        check: Check::ExitStatus(cargo(&[
            "clippy",
            "-p",
            "sync-core",
            "--features",
            "buggify",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])),
    },
    Step {
        name: "docs",
        // Every crate's API docs build, with no link to an item that is
        // missing or private (the workspace's rustdoc lints deny both).
        check: Check::ExitStatus(cargo(&["doc", "--workspace", "--no-deps", "--locked"])),
    },
    Step {
        name: "callgrind workloads",
        // benches/callgrind is its own workspace (it never joins the test
        // build), so only this keeps it compiling as sync-core's API moves.
        check: Check::ExitStatus(cargo(&[
            "clippy",
            "--manifest-path",
            "benches/callgrind/Cargo.toml",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])),
    },
    Step {
        name: "test",
        // --no-fail-fast: a failing test binary does not hide the others.
        check: Check::Tests(
            cargo(&["test", "--workspace", "--locked", "--no-fail-fast"]),
            summary::cargo_test,
        ),
    },
    Step {
        name: "fault switches",
        // The simulation must catch each rule of the core broken on purpose
        // (sync-core's test-only `buggify` feature; see tests/simulation.rs).
        // Every seed passing with the switches off is the "test" step's job.
        check: Check::Tests(
            cargo(&[
                "test",
                "-p",
                "sync-core",
                "--features",
                "buggify",
                "--test",
                "simulation",
                "--locked",
                "--",
                "fault_switches_are_caught",
            ]),
            summary::cargo_test,
        ),
    },
    Step {
        name: "clippy without legacy snapshots",
        // The browser package builds sync-core without its default
        // `legacy-snapshots` feature; the workspace build above unifies it on.
        check: Check::ExitStatus(cargo(&[
            "clippy",
            "-p",
            "sync-core",
            "--no-default-features",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])),
    },
    Step {
        name: "test without legacy snapshots",
        // The unit tests and the format checks of the browser package's
        // sync-core; the other suites build on formats 1-3 or repeat the
        // "test" step.
        check: Check::Tests(
            cargo(&[
                "test",
                "-p",
                "sync-core",
                "--no-default-features",
                "--locked",
                "--lib",
                "--test",
                "legacy_snapshots",
                "--test",
                "checkpoints",
            ]),
            summary::cargo_test,
        ),
    },
    Step {
        name: "wasm32 build",
        check: Check::ExitStatus(cargo(&[
            "build",
            "-p",
            "sync-core",
            "-p",
            "sync-client",
            "--target",
            "wasm32-unknown-unknown",
            "--locked",
            "--release",
        ])),
    },
    Step {
        name: "npm package",
        // Builds bindings/npm (see crate::npm); the npm steps below use it.
        check: Check::ExitStatus(cargo(&["xtask", "npm"])),
    },
    Step {
        name: "IndexedDB store conformance",
        // sync-core's store conformance suite against sync-wasm's IndexedDB
        // store in headless Chromium (wasm-bindgen-test-runner, the runner
        // .cargo/config.toml names; chromedriver from `cargo xtask npm`).
        check: Check::Tests(
            cargo(&[
                "test",
                "-p",
                "sync-wasm",
                "--target",
                "wasm32-unknown-unknown",
                "--locked",
                "--test",
                "idb_conformance",
            ]),
            summary::cargo_test,
        ),
    },
    Step {
        name: "npm node tests",
        check: Check::Tests(
            node(&["--test", "--test-reporter=tap", "test/node.test.mjs"]),
            npm::node_tap,
        ),
    },
    Step {
        name: "npm react tests",
        check: Check::Tests(
            node(&["--test", "--test-reporter=tap", "test/react.test.mjs"]),
            npm::node_tap,
        ),
    },
    Step {
        name: "npm pack test",
        check: Check::Tests(node(&["test/pack.test.mjs"]), summary::passed_failed),
    },
    crate::webperf::BUNDLERS,
    Step {
        name: "quickstart ts",
        // The README's TypeScript quick start, type-checked against the
        // package built above with the package's own tsc (see
        // examples/quickstart/tsconfig.json).
        check: Check::ExitStatus(node(&[
            "node_modules/typescript/bin/tsc",
            "-p",
            "../../examples/quickstart/tsconfig.json",
        ])),
    },
    Step {
        name: "relay release build",
        // The browser tests sync through the real relay binary.
        check: Check::ExitStatus(cargo(&[
            "build",
            "--release",
            "--locked",
            "-p",
            "relay-server",
        ])),
    },
    Step {
        name: "npm browser tests",
        check: Check::Tests(node(&["test/browser.test.mjs"]), summary::passed_failed),
    },
    Step {
        name: "npm tabs tests",
        // Several tabs on one database, the online hint and token refresh,
        // in Chromium against the relay built above.
        check: Check::Tests(node(&["test/tabs.test.mjs"]), summary::passed_failed),
    },
    Step {
        name: "web-todo build",
        // Reuses the relay and npm builds above; builds the demo (Vite)
        // and the debug `concord` CLI its end-to-end test drives.
        check: Check::ExitStatus(cargo(&["xtask", "demo", "--build-only"])),
    },
    Step {
        name: "web-todo e2e",
        check: Check::Tests(
            Cmd {
                program: Program::Tool("node"),
                args: &["e2e/e2e.test.mjs"],
                dir: Some("examples/web-todo"),
            },
            summary::passed_failed,
        ),
    },
    Step {
        name: "no-IO guard",
        check: Check::ForbidDeps {
            cmd: cargo(&[
                "tree",
                "-p",
                "sync-core",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--target",
                "all",
                "--locked",
            ]),
            package: "sync-core",
            forbidden: NO_IO_FORBIDDEN,
        },
    },
    // The bindings: each `cargo xtask *-test` builds (or finds fresh) the one
    // release library and relay, generates the code, then runs its suite
    // (see xtask/src/bindings.rs).
    Step {
        name: "c-abi",
        check: Check::Tests(cargo(&["xtask", "c-abi-test"]), summary::passed_failed),
    },
    Step {
        name: "kotlin",
        check: Check::Tests(cargo(&["xtask", "kotlin-test"]), summary::surefire),
    },
    Step {
        name: "python",
        check: Check::Tests(cargo(&["xtask", "python-test"]), summary::pytest),
    },
    Step {
        name: "swift",
        // `swift test` in a Debian trixie chroot under target/ (set up on first use).
        check: Check::Tests(cargo(&["xtask", "swift-test"]), summary::passed_failed),
    },
];

/// What `cargo xtask bench` builds and runs before the relay load generator
/// (see [`crate::bench`]), in order.
pub(crate) const BENCH: &[Cmd] = &[
    // sync-core's criterion benchmarks.
    cargo(&["bench", "-p", "sync-core", "--locked"]),
    // Side by side with yrs, automerge and loro: its own workspace and
    // Cargo.lock, so the peers never enter this workspace.
    Cmd {
        program: Program::Cargo,
        args: &["bench", "--locked"],
        dir: Some("benches/compare"),
    },
    // The release relay and the load generator that drives it.
    cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "relay-server",
        "-p",
        "loadgen",
    ]),
    // The native client through its public API (SQLite; the relay figures
    // use the release relay built above).
    cargo(&["bench", "-p", "sync-ffi", "--locked"]),
    // The browser package: Node side by side with the peers' npm
    // packages, IndexedDB in headless Chromium, download size.
    crate::webperf::BUILD,
    crate::webperf::PEERS,
    crate::webperf::BROWSER,
    crate::webperf::SIZE,
];

/// A Node script run in the npm package's folder.
const fn node(args: &'static [&'static str]) -> Cmd {
    Cmd {
        program: Program::Tool("node"),
        args,
        dir: Some("bindings/npm"),
    }
}

/// A cargo command run from the workspace root.
const fn cargo(args: &'static [&'static str]) -> Cmd {
    Cmd {
        program: Program::Cargo,
        args,
        dir: None,
    }
}
