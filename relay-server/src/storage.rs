//! The one storage interface the relay runs on, and the backends behind it:
//! SQLite in the data directory ([`crate::store`], the default) and
//! PostgreSQL shared by several relay instances ([`crate::pg_store`],
//! `--postgres URL`).
//!
//! Both backends keep every room's snapshot (which carries the dedup
//! version vector and the tombstone horizon) and its log entries after it,
//! commit many rooms' persists in one transaction (group commit), and
//! complete a request only once it is durable. They differ in ownership:
//!
//! - SQLite is opened by one process, which owns every room; claims are
//!   always granted and fences never checked.
//! - PostgreSQL is shared: a room is served by the one instance holding its
//!   lease ([`Backend::claim`]); every write carries the lease's fencing
//!   token and is refused once another instance has claimed the room, so
//!   an owner that was paused past its lease cannot write after losing it.
//!
//! The conformance tests (`storage_conformance`) run the same checks
//! against both.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sync_core::room::RoomPersist;

use crate::pg_store::PgStore;
use crate::store::{Commit, Store, StoreError, StoredRoom};
use crate::write_queue::FollowUp;

/// The fencing token of a room's lease: every write of the owner carries
/// it, and a write whose token is no longer the lease's is refused.
/// Tokens of one room only grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Fence(pub(crate) i64);

/// The answer to [`Backend::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This instance owns the room now; write with this fence.
    Owned(Fence),
    /// Another live instance owns it; its sessions go there.
    Elsewhere {
        /// The owner's WebSocket URL (its `--advertise`).
        address: String,
    },
}

/// What every storage backend does.
pub(crate) trait Backend {
    /// Queues a room's persists, to be written with `fence`; the commit
    /// resolves once they are durable (or failed: a stale fence fails).
    /// `settles` is the room's previous request (see [`crate::write_queue`]).
    fn submit(
        &self,
        room: Arc<str>,
        fence: Fence,
        batches: Vec<RoomPersist>,
        settles: Option<&FollowUp>,
    ) -> Commit;

    /// The request behind `follow_up` completed and nothing follows it yet.
    fn settle(&self, follow_up: &FollowUp);

    /// Reads a room's snapshot and the log entries after it.
    fn load(&self, room: Arc<str>) -> impl Future<Output = Result<StoredRoom, StoreError>> + Send;

    /// Takes the room's lease if nobody else holds a live one (a new fence
    /// each time), or says who does. A lease held under this instance's
    /// own address is taken over at once: its holder was an earlier process
    /// at this address, now gone (forwarding to it would reach this very
    /// instance).
    fn claim(&self, room: Arc<str>) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the lease; `Ok(false)` once it belongs to someone else.
    fn renew(
        &self,
        room: Arc<str>,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the lease up (the room unloads), so another instance may take
    /// it at once. Its fence stays spent.
    fn release(&self, room: Arc<str>, fence: Fence) -> impl Future<Output = ()> + Send;

    /// Commits what is queued, then stops writing.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The backend this relay runs on; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    /// SQLite in the data directory.
    Sqlite(Store),
    /// PostgreSQL shared with other instances.
    Postgres(PgStore),
}

impl Storage {
    /// How long a lease lasts unless renewed; `None` when leases are not
    /// needed (SQLite).
    pub(crate) fn lease_ttl(&self) -> Option<Duration> {
        match self {
            Storage::Sqlite(_) => None,
            Storage::Postgres(pg) => Some(pg.lease_ttl()),
        }
    }
}

impl Backend for Storage {
    fn submit(
        &self,
        room: Arc<str>,
        fence: Fence,
        batches: Vec<RoomPersist>,
        settles: Option<&FollowUp>,
    ) -> Commit {
        match self {
            Storage::Sqlite(s) => s.submit(room, fence, batches, settles),
            Storage::Postgres(s) => s.submit(room, fence, batches, settles),
        }
    }

    fn settle(&self, follow_up: &FollowUp) {
        match self {
            Storage::Sqlite(s) => Backend::settle(s, follow_up),
            Storage::Postgres(s) => s.settle(follow_up),
        }
    }

    async fn load(&self, room: Arc<str>) -> Result<StoredRoom, StoreError> {
        match self {
            Storage::Sqlite(s) => Backend::load(s, room).await,
            Storage::Postgres(s) => s.load(room).await,
        }
    }

    async fn claim(&self, room: Arc<str>) -> Result<Claim, StoreError> {
        match self {
            Storage::Sqlite(s) => s.claim(room).await,
            Storage::Postgres(s) => s.claim(room).await,
        }
    }

    async fn renew(&self, room: Arc<str>, fence: Fence) -> Result<bool, StoreError> {
        match self {
            Storage::Sqlite(s) => s.renew(room, fence).await,
            Storage::Postgres(s) => s.renew(room, fence).await,
        }
    }

    async fn release(&self, room: Arc<str>, fence: Fence) {
        match self {
            Storage::Sqlite(s) => s.release(room, fence).await,
            Storage::Postgres(s) => s.release(room, fence).await,
        }
    }

    async fn close(&self) {
        match self {
            Storage::Sqlite(s) => Backend::close(s).await,
            Storage::Postgres(s) => s.close().await,
        }
    }
}
