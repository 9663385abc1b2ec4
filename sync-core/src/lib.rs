//! Concord's core: a local-first replica that merges per field under a
//! hybrid logical clock, with no IO of its own.
//!
//! The core never reads a clock, touches a file or opens a socket. The host
//! passes the wall clock (`now`, a [`Timestamp`]) into every call that
//! needs it, writes the [`PersistBatch`]es the core hands
//! out, and forwards operations between replicas.
//!
//! ```
//! use std::time::Duration;
//! use sync_core::{Replica, ReplicaConfig, ReplicaId, Timestamp, Value, store::{MemoryStore, Store}};
//!
//! let now = Timestamp::from_unix_ms(1_700_000_000_000); // the host's wall clock
//! let mut alice = Replica::new(ReplicaId(1), ReplicaConfig::default());
//! let mut bob = Replica::new(ReplicaId(2), ReplicaConfig::default());
//! let mut alice_disk = MemoryStore::new();
//!
//! // Concurrent edits of different fields of one document both survive.
//! alice.put(now, "todos", "milk", [("title", Value::from("Buy milk"))])?;
//! bob.put(now, "todos", "milk", [("done", Value::from(true))])?;
//! if let Some(batch) = alice.take_persist() {
//!     alice_disk.write(&batch)?; // durable once written
//! }
//!
//! // Exchange operations (a relay does this in production), in any order.
//! for op in alice.outbox() { bob.apply(now, &op)?; }
//! for op in bob.outbox() { alice.apply(now, &op)?; }
//! assert_eq!(alice.state(), bob.state());
//!
//! let doc = alice.get("todos", "milk").expect("exists");
//! assert_eq!(doc.fields["title"], Value::from("Buy milk"));
//! assert_eq!(doc.fields["done"], Value::from(true));
//!
//! // Optimistic concurrency: a write conditional on the revision we read.
//! let stale = doc.revision;
//! let later = now + Duration::from_millis(1);
//! bob.put(later, "todos", "milk", [("title", "Buy oat milk")])?;
//! let op = bob.outbox().next_back().expect("queued");
//! alice.apply(later, &op)?;
//! assert!(alice.put_if(later + Duration::from_millis(1), "todos", "milk", [("title", "Buy soy milk")], Some(stale)).is_err());
//!
//! // Crash and restart: the replica comes back from what was persisted.
//! let restored = Replica::restore(ReplicaConfig::default(), alice_disk.read_all()?)?.expect("stored");
//! assert_eq!(restored.get("todos", "milk").unwrap().fields["title"], Value::from("Buy milk"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map: [`hlc`] (the clock), [`stamp`] (the total order), [`value`]
//! (field values), [`op`] (operations), [`state`] (merge rules), [`version`]
//! (what has been applied), [`persist`] (store records), [`snapshot`] (whole
//! state blobs), [`store`] (the storage trait and its conformance suite).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod base64;
#[cfg(feature = "buggify")]
#[doc(hidden)]
pub mod buggify;
#[cfg(not(feature = "buggify"))]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "only the buggify feature uses the switches outside their hooks"
)]
mod buggify;
mod crc32;
mod deadline;
#[cfg(feature = "legacy-snapshots")]
mod delta_stamp;
pub mod event;
mod gate;
pub mod hlc;
pub mod limits;
pub mod op;
pub mod persist;
pub mod protocol;
mod quoted;
mod replica;
pub mod revision;
mod rng;
#[cfg(feature = "relay")]
pub mod room;
pub mod session;
mod setters;
pub mod snapshot;
pub mod stamp;
pub mod state;
pub mod store;
mod timestamp;
pub mod token;
pub mod value;
pub mod version;

pub use event::{Event, Origin};
pub use gate::PersistId;
pub use hlc::{Clock, ClockError, Hlc};
pub use op::{Change, InvalidOp, Op, OpId};
pub use persist::{PersistBatch, StoreKey, Write};
pub use replica::{
    Applied, ApplyError, Outbox, Replica, ReplicaConfig, ReplicaLoader, RestoreError, Transaction,
    WriteError,
};
pub use revision::Revision;
pub use snapshot::{Snapshot, SnapshotError};
pub use stamp::{ReplicaId, Stamp};
pub use state::{Document, DocumentRef, Documents, State};
pub use timestamp::Timestamp;
pub use value::{Value, ValueRef};
pub use version::VersionVector;
