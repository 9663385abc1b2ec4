//! The PostgreSQL backend: every room's snapshot, log entries and lease in
//! one database shared by several relay instances (`--postgres URL`).
//!
//! Tables (created on first start, under an advisory lock so instances
//! starting together do not race):
//!
//! - `concord_entries (room, log_offset, op)`, primary key `(room,
//!   log_offset)`: the log after the snapshot. The key makes a second write
//!   of an offset fail, so offsets can never be reused.
//! - `concord_snapshots (room, through, bytes)`: the snapshot, which carries
//!   the room's version vector (dedup) and tombstone horizon.
//! - `concord_leases (room, owner, address, fence, expires_at)`: who serves
//!   the room. Claiming an expired (or released) lease increments `fence`;
//!   rows are never deleted, so a fence is never handed out twice.
//!
//! Writes: one writer thread per instance does group commit exactly as the
//! SQLite backend does ([`crate::store::write_loop`]): every room's pending
//! request goes into one transaction, each under a savepoint, and each
//! first locks its room's lease row (`FOR SHARE`) and checks that the fence
//! is still its own. A claim by another instance updates that row, so it
//! either waits for the writer's transaction (whose rows the new owner then
//! reads) or happens first (and the writer's request fails). An instance
//! that was paused past its lease therefore cannot write after losing it.
//! Requests complete only after `COMMIT` returns (PostgreSQL's
//! `synchronous_commit` decides what that means; keep it `on`).
//!
//! Lease times are PostgreSQL's `now()`, never an instance's clock.
//!
//! A lost connection (PostgreSQL restarted) is replaced on next use; a
//! group that failed before its `COMMIT` was sent is retried once on the
//! new connection (nothing of it was written), one whose `COMMIT` got no
//! answer fails, and its rooms reload from what PostgreSQL holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sync_core::room::RoomPersist;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use crate::metrics::Metrics;
use crate::storage::{Backend, Claim, Fence};
use crate::store::{Commit, StoreError, StoredRoom, WriteRequest, Writer, write_loop};
use crate::write_queue::FollowUp;

/// Schema version this relay reads and writes.
const SCHEMA_VERSION: i32 = 1;

/// Key of the advisory lock held while creating the schema.
const SCHEMA_LOCK: i64 = 0x0063_6f6e_636f_7264;

/// Longest wait for a connection or one statement outside the writer.
const PG_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS concord_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS concord_entries (
    room TEXT NOT NULL,
    log_offset BIGINT NOT NULL CHECK (log_offset > 0),
    op BYTEA NOT NULL,
    PRIMARY KEY (room, log_offset)
);
CREATE TABLE IF NOT EXISTS concord_snapshots (
    room TEXT PRIMARY KEY,
    through BIGINT NOT NULL,
    bytes BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS concord_leases (
    room TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    address TEXT NOT NULL,
    fence BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
";

fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Postgres { context, source }
}

/// `f`, or [`StoreError::Timeout`] after [`PG_TIMEOUT`].
async fn timed<T>(
    context: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(PG_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Timeout(context.to_owned())))
}

/// Handle to the shared database; cheap to clone.
#[derive(Clone)]
pub(crate) struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// This process, as lease owner: address, process id and start time.
    instance: String,
    /// Where other instances send this instance's rooms' sessions.
    address: String,
    ttl: Duration,
    writer: Writer,
    /// Connection for loads and leases, replaced when it breaks.
    reader: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// Opens a connection whose driver runs on the current runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, connection) = tokio::time::timeout(PG_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Timeout("connecting to PostgreSQL".into()))?
        .map_err(pg("connecting to PostgreSQL"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection lost; the next use reconnects");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects, creates or checks the schema, and starts the writer.
    /// `address` is this instance's WebSocket URL for the others; `ttl`
    /// how long a lease lasts without renewal.
    pub(crate) async fn open(
        url: &str,
        address: String,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg("parsing --postgres"))?;
        config
            .connect_timeout(PG_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("concord-relay");
        let mut client = connect(&config).await?;
        timed("creating the schema", async {
            let tx = client
                .transaction()
                .await
                .map_err(pg("creating the schema"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(pg("locking the schema"))?;
            tx.batch_execute(SCHEMA)
                .await
                .map_err(pg("creating the schema"))?;
            let found: Option<i32> = tx
                .query_one("SELECT max(version) FROM concord_schema", &[])
                .await
                .map_err(pg("reading the schema version"))?
                .get(0);
            match found {
                None => {
                    tx.execute(
                        "INSERT INTO concord_schema (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await
                    .map_err(pg("writing the schema version"))?;
                }
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerPgSchema {
                        found: i64::from(found),
                    });
                }
                Some(_) => {}
            }
            tx.commit().await.map_err(pg("creating the schema"))
        })
        .await?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let instance = format!("{address} pid {} at {started}", std::process::id());
        let writer = {
            let config = config.clone();
            Writer::start("concord-pg-writer", move |queue| {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "cannot start the PostgreSQL writer");
                        drop(queue.close());
                        return;
                    }
                };
                let mut conn: Option<WriterConn> = None;
                write_loop(&queue, &metrics, |group| {
                    runtime.block_on(commit_group(&config, &mut conn, group))
                });
            })
            .map_err(|source| StoreError::Dir {
                path: "PostgreSQL writer thread".into(),
                source,
            })?
        };
        Ok(PgStore {
            inner: Arc::new(Inner {
                config,
                instance,
                address,
                ttl,
                writer,
                reader: tokio::sync::Mutex::new(Some(Arc::new(client))),
            }),
        })
    }

    /// How long a lease lasts without renewal.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The reader connection, reconnected if it broke.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut reader = self.inner.reader.lock().await;
        if let Some(client) = reader.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *reader = None;
        let client = Arc::new(connect(&self.inner.config).await?);
        *reader = Some(client.clone());
        Ok(client)
    }

    fn ttl_secs(&self) -> f64 {
        self.inner.ttl.as_secs_f64()
    }
}

impl Backend for PgStore {
    fn submit(
        &self,
        room: Arc<str>,
        fence: Fence,
        batches: Vec<RoomPersist>,
        settles: Option<&FollowUp>,
    ) -> Commit {
        self.inner.writer.submit(room, fence, batches, settles)
    }

    fn settle(&self, follow_up: &FollowUp) {
        self.inner.writer.settle(follow_up);
    }

    async fn load(&self, room: Arc<str>) -> Result<StoredRoom, StoreError> {
        let context = format!("reading room {room:?}");
        timed(&context, async {
            let client = self.client().await?;
            let snapshot = client
                .query_opt(
                    "SELECT through, bytes FROM concord_snapshots WHERE room = $1",
                    &[&&*room],
                )
                .await
                .map_err(pg(&context))?;
            let snapshot = match snapshot {
                Some(row) => Some((to_u64(row.get(0))?, row.get::<_, Vec<u8>>(1))),
                None => None,
            };
            let through = snapshot.as_ref().map_or(0, |(t, _)| *t);
            let rows = client
                .query(
                    "SELECT log_offset, op FROM concord_entries \
                     WHERE room = $1 AND log_offset > $2 ORDER BY log_offset",
                    &[&&*room, &to_i64(through)],
                )
                .await
                .map_err(pg(&context))?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in rows {
                entries.push((to_u64(row.get(0))?, row.get::<_, Vec<u8>>(1)));
            }
            Ok((snapshot, entries))
        })
        .await
    }

    async fn claim(&self, room: Arc<str>) -> Result<Claim, StoreError> {
        let context = format!("claiming room {room:?}");
        timed(&context, async {
            let client = self.client().await?;
            let claimed = client
                .query_opt(
                    "INSERT INTO concord_leases AS l (room, owner, address, fence, expires_at) \
                     VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4)) \
                     ON CONFLICT (room) DO UPDATE SET owner = excluded.owner, \
                         address = excluded.address, fence = l.fence + 1, \
                         expires_at = excluded.expires_at \
                     WHERE l.expires_at <= now() OR l.owner = excluded.owner \
                         OR l.address = excluded.address \
                     RETURNING fence",
                    &[
                        &&*room,
                        &self.inner.instance,
                        &self.inner.address,
                        &self.ttl_secs(),
                    ],
                )
                .await
                .map_err(pg(&context))?;
            if let Some(row) = claimed {
                return Ok(Claim::Owned(Fence(row.get(0))));
            }
            let owner = client
                .query_opt(
                    "SELECT address FROM concord_leases WHERE room = $1",
                    &[&&*room],
                )
                .await
                .map_err(pg(&context))?;
            match owner {
                Some(row) => Ok(Claim::Elsewhere {
                    address: row.get(0),
                }),
                // Released and deleted in between: cannot happen (rows
                // stay), but asking again is the answer.
                None => Err(StoreError::Timeout(format!(
                    "{context}: the lease vanished"
                ))),
            }
        })
        .await
    }

    async fn renew(&self, room: Arc<str>, fence: Fence) -> Result<bool, StoreError> {
        let context = format!("renewing the lease of room {room:?}");
        timed(&context, async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE concord_leases SET expires_at = now() + make_interval(secs => $3) \
                     WHERE room = $1 AND fence = $2",
                    &[&&*room, &fence.0, &self.ttl_secs()],
                )
                .await
                .map_err(pg(&context))?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, room: Arc<str>, fence: Fence) {
        let context = format!("releasing the lease of room {room:?}");
        let released = timed(&context, async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE concord_leases SET expires_at = '-infinity' \
                     WHERE room = $1 AND fence = $2",
                    &[&&*room, &fence.0],
                )
                .await
                .map_err(pg(&context))
        })
        .await;
        if let Err(error) = released {
            // The lease then simply expires.
            tracing::warn!(%error, "could not release a lease");
        }
    }

    async fn close(&self) {
        self.inner.writer.close().await;
    }
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Offset(v))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The writer's connection and its prepared statements.
struct WriterConn {
    client: Client,
    fence: Statement,
    append: Statement,
    snapshot: Statement,
    truncate: Statement,
}

impl WriterConn {
    async fn open(config: &tokio_postgres::Config) -> Result<WriterConn, StoreError> {
        let client = connect(config).await?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(pg("preparing the writer's statements"))
            }
        };
        let fence =
            prepare("SELECT 1 FROM concord_leases WHERE room = $1 AND fence = $2 FOR SHARE")
                .await?;
        let append = prepare(
            "INSERT INTO concord_entries (room, log_offset, op) \
             SELECT $1, t.o, t.b FROM UNNEST($2::int8[], $3::bytea[]) AS t(o, b)",
        )
        .await?;
        let snapshot = prepare(
            "INSERT INTO concord_snapshots (room, through, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (room) DO UPDATE SET through = excluded.through, bytes = excluded.bytes",
        )
        .await?;
        let truncate =
            prepare("DELETE FROM concord_entries WHERE room = $1 AND log_offset <= $2").await?;
        Ok(WriterConn {
            client,
            fence,
            append,
            snapshot,
            truncate,
        })
    }
}

/// Why a group failed.
enum GroupError {
    /// Before `COMMIT` was sent: nothing of the group was written.
    Before(tokio_postgres::Error),
    /// `COMMIT` failed or got no answer: the outcome is unknown.
    AtCommit(tokio_postgres::Error),
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error(
        "fenced: another relay instance has claimed this room since (its lease was lost); \
         nothing was written"
    )]
    Fenced,
}

/// Writes a group in one transaction, reconnecting first if needed, and
/// once more if the connection broke before `COMMIT`.
async fn commit_group(
    config: &tokio_postgres::Config,
    conn: &mut Option<WriterConn>,
    group: &[WriteRequest],
) -> Vec<Result<(), String>> {
    let fail = |message: String| vec![Err(message); group.len()];
    for attempt in 0..2 {
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            *conn = None;
            match WriterConn::open(config).await {
                Ok(opened) => *conn = Some(opened),
                Err(e) => return fail(e.to_string()),
            }
        }
        let Some(c) = conn.as_mut() else {
            return fail(StoreError::Closed.to_string());
        };
        match try_group(c, group).await {
            Ok(results) => return results,
            Err(GroupError::Before(e)) => {
                let broken = c.client.is_closed();
                if broken {
                    *conn = None;
                }
                if !(broken && attempt == 0) {
                    return fail(format!("writing to PostgreSQL: {e}"));
                }
                tracing::info!(error = %e, "PostgreSQL connection lost before commit; retrying the group");
            }
            Err(GroupError::AtCommit(e)) => {
                if c.client.is_closed() {
                    *conn = None;
                }
                return fail(format!("committing to PostgreSQL: {e}"));
            }
        }
    }
    fail("PostgreSQL connection lost twice".into())
}

async fn try_group(
    c: &mut WriterConn,
    group: &[WriteRequest],
) -> Result<Vec<Result<(), String>>, GroupError> {
    let WriterConn {
        client,
        fence,
        append,
        snapshot,
        truncate,
    } = c;
    let stmts = Stmts {
        fence,
        append,
        snapshot,
        truncate,
    };
    let mut tx = client.transaction().await.map_err(GroupError::Before)?;
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let sp = tx.savepoint("request").await.map_err(GroupError::Before)?;
        match apply(&sp, &stmts, request).await {
            Ok(()) => {
                sp.commit().await.map_err(GroupError::Before)?;
                results.push(Ok(()));
            }
            Err(e) => {
                sp.rollback().await.map_err(GroupError::Before)?;
                results.push(Err(format!("writing room {:?}: {e}", request.room)));
            }
        }
    }
    tx.commit().await.map_err(GroupError::AtCommit)?;
    Ok(results)
}

struct Stmts<'a> {
    fence: &'a Statement,
    append: &'a Statement,
    snapshot: &'a Statement,
    truncate: &'a Statement,
}

async fn apply(
    tx: &Transaction<'_>,
    stmts: &Stmts<'_>,
    request: &WriteRequest,
) -> Result<(), RequestError> {
    let room: &str = &request.room;
    if tx
        .query_opt(stmts.fence, &[&room, &request.fence.0])
        .await?
        .is_none()
    {
        return Err(RequestError::Fenced);
    }
    for batch in &request.batches {
        if !batch.append.is_empty() {
            let offsets: Vec<i64> = batch.append.iter().map(|(o, _)| to_i64(*o)).collect();
            let ops: Vec<&[u8]> = batch.append.iter().map(|(_, op)| &op[..]).collect();
            tx.execute(stmts.append, &[&room, &offsets, &ops]).await?;
        }
        if let Some((through, bytes)) = &batch.snapshot {
            tx.execute(stmts.snapshot, &[&room, &to_i64(*through), &&bytes[..]])
                .await?;
        }
        if let Some(through) = batch.truncate_through {
            tx.execute(stmts.truncate, &[&room, &to_i64(through)])
                .await?;
        }
    }
    Ok(())
}
