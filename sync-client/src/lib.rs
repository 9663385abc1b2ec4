//! Concord's client SDK, written once for every platform.
//!
//! A [`Database`] keeps collections of documents in a local store, answers
//! reads from memory at once, applies writes at once (their futures resolve
//! when they are durable), and syncs with a room on a Concord relay
//! whenever it can reach it. Concurrent edits merge per field: the last
//! writer wins each field, so edits of different fields all survive.
//!
//! Platforms supply three things ([`platform`]): a transport, a store and a
//! timer. The browser package and the native crate do; this crate's
//! [`memory`] module has in-memory ones for tests and examples:
//!
//! ```
//! use sync_client::{Database, Options, Value, memory};
//!
//! # futures::executor::block_on(async {
//! let (db, host) = memory::open_local(memory::MemoryStore::new(), Options::local()).await?;
//! let mut driver = memory::Driver::new(host);
//!
//! let todos = db.collection("todos");
//! let write = todos.put("milk", [("title", Value::from("Buy milk")), ("done", false.into())]);
//! // Reads see the write at once; the future resolves once it is stored.
//! assert_eq!(todos.get("milk").unwrap().fields["title"], Value::from("Buy milk"));
//! driver.run_until(write).await?;
//! # Ok::<(), sync_client::Error>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]

mod changes;
mod database;
mod error;
mod host;
pub mod memory;
pub mod platform;
mod status;

pub use changes::{Change, Origin, Subscription};
pub use database::{
    Collection, Database, Fields, ListOptions, Options, Pending, RelayOptions, Ticket, TokenSource,
    TypedCollection, to_fields,
};
pub use error::Error;
pub use host::{HostLoop, Platform, open};
pub use status::{Connection, Status, StatusStream};
pub use sync_core::{
    Document, DocumentRef, ReplicaId, Revision, Timestamp, Transaction, Value, ValueRef,
};
