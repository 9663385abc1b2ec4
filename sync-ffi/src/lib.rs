//! Concord's native client SDK: the platform pieces that the shared
//! `sync-client` host loop runs on outside the browser.
//!
//! - [`SqliteStore`]: the durable store, one SQLite file per database, with a
//!   group-committing writer thread;
//! - [`WsTransport`] (with [`WsOptions`]): WebSocket connections to a relay,
//!   `ws://` and `wss://` (rustls with ring);
//! - [`TokioTimer`]: wall-clock time and tokio sleeps.
//!
//! Each implements one of the traits in [`sync_client::platform`].
#![forbid(unsafe_code)]

mod sqlite;
mod timer;
mod ws;

pub use sqlite::SqliteStore;
pub use timer::TokioTimer;
pub use ws::{WsOptions, WsTransport};
