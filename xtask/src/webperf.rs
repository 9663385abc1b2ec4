//! The browser package's performance and bundler checks: the bundler step
//! of `cargo xtask test` and the Node and Chromium benchmarks of
//! `cargo xtask bench`. All run in `bindings/npm` against the package
//! `cargo xtask npm` built; their tools (Vite, webpack, the peer CRDT
//! packages, Playwright) are the package's devDependencies, installed by
//! the `npm ci` of that build, and Chromium comes from
//! [`crate::npm::ensure_chromium`].

use crate::steps::{Check, Cmd, Program, Step};
use crate::summary;

/// A Node command run in the npm package's folder.
const fn node(args: &'static [&'static str]) -> Cmd {
    Cmd {
        program: Program::Tool("node"),
        args,
        dir: Some("bindings/npm"),
    }
}

/// `cargo xtask test`: the packed tarball built by Vite and by webpack 5
/// in a scratch app, each bundle run in headless Chromium.
pub(crate) const BUNDLERS: Step = Step {
    name: "npm bundlers",
    check: Check::Tests(node(&["test/bundlers.test.mjs"]), summary::passed_failed),
};

/// `cargo xtask bench`: builds the npm package (and installs Chromium).
pub(crate) const BUILD: Cmd = Cmd {
    program: Program::Cargo,
    args: &["xtask", "npm"],
    dir: None,
};

/// `cargo xtask bench`: the peer workloads in Node against loro-crdt,
/// @automerge/automerge and yjs (Node 20 needs the flag for `WebSocket`;
/// `--expose-gc` lets the script collect garbage outside timed sections).
pub(crate) const PEERS: Cmd = node(&["--experimental-websocket", "--expose-gc", "bench/peers.mjs"]);

/// `cargo xtask bench`: the IndexedDB figures in headless Chromium.
pub(crate) const BROWSER: Cmd = node(&["bench/browser.mjs"]);

/// `cargo xtask bench`: download size against the peers.
pub(crate) const SIZE: Cmd = node(&["bench/size.mjs"]);
