//! Concord's native client SDK: a local-first database on SQLite that syncs
//! with a Concord relay over WebSockets, for Rust apps, and the base of the
//! Swift, Kotlin and Python bindings.
//!
//! ```no_run
//! use sync_ffi::{Options, RelayOptions, Value, Wait};
//!
//! let relay = RelayOptions::new("ws://127.0.0.1:8787/v1/sync", "my-room", "TOKEN");
//! let db = sync_ffi::open("todos.db", Options::with_relay(relay))?;
//! let todos = db.collection("todos");
//! // Applied at once (reads see it); `wait` returns once it is on disk.
//! todos.put("milk", [("title", Value::from("Buy milk")), ("done", false.into())]).wait()?;
//! assert_eq!(todos.get("milk").unwrap().fields["done"], Value::from(false));
//! # Ok::<(), sync_ffi::Error>(())
//! ```
//!
//! The API is [`sync_client`]'s, the same on every platform; this crate
//! supplies its native platform:
//!
//! - [`open`]: a database in one SQLite file, run by a thread of its own
//!   (callers need no async runtime; writes can be awaited or [`Wait`]ed);
//! - [`SqliteStore`]: the durable store: WAL, a group-committing writer
//!   thread, syncer threads that put each commit on disk before its
//!   callers are answered, and an OS lock so one process at a time opens a
//!   database;
//! - [`WsTransport`] (with [`WsOptions`]): WebSocket connections to a relay,
//!   `ws://` and `wss://` (rustls with ring);
//! - [`TokioTimer`]: wall-clock time and tokio sleeps.
#![forbid(unsafe_code)]

mod native;
mod sqlite;
mod timer;
mod ws;

pub use native::{Wait, open, open_with};
pub use sqlite::SqliteStore;
pub use sync_client::{
    Change, Collection, Connection, Database, Document, DocumentRef, Error, Fields, ListOptions,
    Options, Origin, Pending, RelayOptions, ReplicaId, Revision, Status, StatusStream,
    Subscription, TokenSource, Transaction, TypedCollection, Value, ValueRef,
};
pub use timer::TokioTimer;
pub use ws::{WsOptions, WsTransport};
