//! Concord's uniffi exports: the native [`sync_ffi`] database for Kotlin,
//! Swift and Python.
//!
//! `cargo xtask bindings` builds this crate as a C library and generates the
//! three languages' code from it; the hand-written packages in `bindings/`
//! add a thin idiomatic layer on top. The exported surface is the Rust API's,
//! shaped for foreign callers:
//!
//! - values cross as [`Value`] trees (null, bool, int, float, string, bytes,
//!   list, map), documents as [`Document`] records, revisions as strings;
//! - every failure is one [`ConcordError`] variant, its cause in the message;
//! - writes come in two forms: `async` (resolves once durable; Kotlin
//!   `suspend`, Swift `async`) and `_blocking` (blocks the calling thread);
//! - subscriptions and status changes are pulled ([`Subscription::next`]),
//!   so foreign code never runs on the database's thread;
//! - the one callback, [`TokenProvider`], runs on a thread of its own, with a
//!   time limit: a provider that throws or hangs leaves the database working.
//!
//! ```
//! use std::collections::HashMap;
//! use concord_ffi::{OpenOptions, Value};
//!
//! let dir = std::env::temp_dir().join(format!("concord-ffi-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("todos.db").display().to_string();
//! let db = concord_ffi::open_database(path, OpenOptions { relay: None, agent: None }, None)?;
//! let todos = db.collection("todos".into());
//! let fields = HashMap::from([("title".to_owned(), Value::StringValue { value: "milk".into() })]);
//! todos.put_blocking("milk".into(), fields)?;
//! let doc = todos.get("milk".into()).expect("written");
//! assert_eq!(doc.fields["title"], Value::StringValue { value: "milk".into() });
//! db.shutdown_blocking();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), concord_ffi::ConcordError>(())
//! ```

mod database;
mod error;
mod stream;
mod token;
mod value;

pub use database::{Collection, Database, OpenOptions, RelayConfig, WriteOp, open_database};
pub use error::{ConcordError, TokenError};
pub use stream::{Change, Connection, Origin, Status, StatusStream, Subscription};
pub use token::TokenProvider;
pub use value::{Document, Value};

uniffi::setup_scaffolding!();
