//! Concord in the browser and in Node: a thin wasm-bindgen adapter over
//! `sync-client`.
//!
//! `sync-client` holds the whole client (the host loop, the `Database`
//! API); this crate only supplies its three platform parts and exposes the
//! API to JavaScript:
//!
//! - [`transport`]: the relay link over the platform's `WebSocket`;
//! - [`store`]: an IndexedDB store, each persist batch in one transaction
//!   (browsers), or `sync-client`'s in-memory store (Node, tests);
//! - [`timer`]: `Date.now()` and `setTimeout`.
//!
//! The JavaScript side is the npm package `concord-sync` (`bindings/npm`),
//! whose TypeScript layer turns these bindings into a Promise-based,
//! camelCase API:
//!
//! ```text
//! import { open } from "concord-sync";
//! const db = await open("notes", { relayUrl: "ws://127.0.0.1:8787/v1/sync", room: "team", token });
//! const todos = db.collection<Todo>("todos");
//! await todos.put("milk", { title: "Buy milk", done: false });
//! ```
//!
//! On the host (not wasm32) the crate builds too, so that its value
//! conversion rules can be checked without a browser:
//!
//! ```
//! assert!(sync_wasm::is_safe_integer(9_007_199_254_740_991.0));
//! assert!(!sync_wasm::is_safe_integer(0.5));
//! ```

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[allow(
    unsafe_code,
    reason = "a global allocator is unsafe code by nature; see its comments"
)]
mod alloc;
mod api;
mod convert;
mod packed;
pub mod store;
pub mod timer;
pub mod transport;

pub use api::{WasmDatabase, WasmSubscription, open_database};
pub use convert::is_safe_integer;
