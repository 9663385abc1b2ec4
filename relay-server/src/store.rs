//! The relay's storage: one SQLite database in the data directory holding
//! every room's snapshot and log entries.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit returns only
//! after its WAL frames are fsynced. One writer thread does group commit: it
//! takes every persist request queued from every room, writes them all in one
//! transaction (one fsync), then completes each request. Under load many
//! rooms' and sessions' writes share one fsync; with no load a request is
//! committed at once. Before starting a group the writer waits briefly for
//! rooms that promised another request the moment their last one completed
//! (the handshake in [`crate::write_queue`]), so those writes join this
//! group rather than the next. Room loads read through a separate
//! connection, which WAL lets run alongside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use sync_core::room::RoomPersist;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::storage::{Backend, Claim, Fence};
use crate::write_queue::{FollowUp, WriteQueue};

/// File name of the database inside the data directory.
pub(crate) const DB_FILE: &str = "relay.sqlite3";

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Most persist requests merged into one transaction.
pub(crate) const MAX_GROUP: usize = 4096;

/// Longest the writer waits, after a commit, for rooms that promised their
/// next request before it starts the next group without them. A room task
/// woken by its completion normally submits within tens of microseconds;
/// the bound keeps a descheduled room from idling the disk for everyone
/// (it then only misses one group).
pub(crate) const MAX_FOLLOW_UP_WAIT: Duration = Duration::from_millis(1);

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// SQLite reported an error.
    #[error("{context}: {source}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The error.
        source: rusqlite::Error,
    },
    /// The integrity check failed.
    #[error(
        "database {path} failed its integrity check: {detail}. Restore it from a backup, or \
         move it away to start empty (every client then resyncs from scratch)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What `PRAGMA quick_check` said.
        detail: String,
    },
    /// The database was written by a newer relay.
    #[error(
        "database {path} has schema version {found}; this relay reads version {SCHEMA_VERSION}"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread is gone (the relay is stopping).
    #[error("the storage writer has stopped")]
    Closed,
    /// A stored offset does not fit.
    #[error("stored offset {0} is out of range")]
    Offset(i64),
    /// PostgreSQL reported an error (or could not be reached).
    #[error("{context}: {source}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The error.
        source: tokio_postgres::Error,
    },
    /// The PostgreSQL database was written by a newer relay.
    #[error("the PostgreSQL schema has version {found}; this relay reads version 1")]
    NewerPgSchema {
        /// Its version.
        found: i64,
    },
    /// PostgreSQL did not answer in time.
    #[error("{0}: PostgreSQL did not answer in time")]
    Timeout(String),
}

fn sql(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Sqlite { context, source }
}

/// A room as stored: its snapshot and the log entries after it.
pub(crate) type StoredRoom = (Option<(u64, Vec<u8>)>, Vec<(u64, Vec<u8>)>);

/// What the writer thread is asked to do.
pub(crate) enum Job {
    /// Make a room's persists durable.
    Write(WriteRequest),
    /// Commit what is queued ahead of this, then stop.
    Stop,
}

/// One room's persists, to be made durable together.
pub(crate) struct WriteRequest {
    /// The room.
    pub(crate) room: Arc<str>,
    /// The fence of the lease it is written under.
    pub(crate) fence: Fence,
    /// Its persists, in order.
    pub(crate) batches: Vec<RoomPersist>,
    done: oneshot::Sender<Result<(), String>>,
    follow_up: FollowUp,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    writer: Arc<Writer>,
    reader: Arc<Mutex<Connection>>,
}

/// The writer thread and its queue. Dropping the last handle stops the
/// thread once everything queued is committed.
pub(crate) struct Writer {
    queue: Arc<WriteQueue<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts a writer thread running `body` on the queue.
    pub(crate) fn start(
        name: &str,
        body: impl FnOnce(Arc<WriteQueue<Job>>) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let queue = Arc::new(WriteQueue::default());
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(queue))?
        };
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a room's persists; see [`Backend::submit`].
    pub(crate) fn submit(
        &self,
        room: Arc<str>,
        fence: Fence,
        batches: Vec<RoomPersist>,
        settles: Option<&FollowUp>,
    ) -> Commit {
        let (done, durable) = oneshot::channel();
        let follow_up = FollowUp::default();
        let request = WriteRequest {
            room,
            fence,
            batches,
            done,
            follow_up: follow_up.clone(),
        };
        if let Err(Job::Write(request)) = self.queue.push(Job::Write(request), settles) {
            let _ = request.done.send(Err(StoreError::Closed.to_string()));
        }
        Commit { durable, follow_up }
    }

    /// See [`Backend::settle`].
    pub(crate) fn settle(&self, follow_up: &FollowUp) {
        follow_up.settle(&self.queue);
    }

    /// Stops the thread once everything queued before this call is
    /// committed. Requests made afterwards fail.
    pub(crate) async fn close(&self) {
        let _ = self.queue.push(Job::Stop, None);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.queue.push(Job::Stop, None);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A pending durable write: resolves once committed (or failed).
pub(crate) type Durable = oneshot::Receiver<Result<(), String>>;

/// A submitted request: when it is durable, and its handshake cell
/// ([`FollowUp::promise`] while it is in flight, settle once it completed).
#[derive(Debug)]
pub(crate) struct Commit {
    /// Resolves once committed (or failed).
    pub(crate) durable: Durable,
    /// Tells the writer whether another request follows this one.
    pub(crate) follow_up: FollowUp,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, checks its
    /// integrity, and starts the writer thread. Blocking.
    pub(crate) fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let writer = open_connection(&path)?;
        check(&writer, &path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS snapshots (
                     room TEXT PRIMARY KEY NOT NULL,
                     through INTEGER NOT NULL,
                     bytes BLOB NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS entries (
                     room TEXT NOT NULL,
                     log_offset INTEGER NOT NULL,
                     op BLOB NOT NULL,
                     PRIMARY KEY (room, log_offset)
                 ) WITHOUT ROWID;",
            )
            .map_err(sql(format!("creating tables in {}", path.display())))?;
        writer
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("setting the schema version"))?;
        let reader = open_connection(&path)?;
        let writer = Writer::start("concord-store-writer", move |queue| {
            let mut conn = writer;
            write_loop(&queue, &metrics, |group| commit_group(&mut conn, group));
            // Fold the WAL back into the database so the next start reads less.
            let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
        })
        .map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            writer: Arc::new(writer),
            reader: Arc::new(Mutex::new(reader)),
        })
    }
}

impl Backend for Store {
    /// Queues a room's persists; the returned commit resolves once they are
    /// durable. The fence is not checked: one process owns the file and
    /// every room in it. Never waits: each room keeps a bounded number of
    /// requests outstanding, which bounds the queue.
    fn submit(
        &self,
        room: Arc<str>,
        fence: Fence,
        batches: Vec<RoomPersist>,
        settles: Option<&FollowUp>,
    ) -> Commit {
        self.writer.submit(room, fence, batches, settles)
    }

    fn settle(&self, follow_up: &FollowUp) {
        self.writer.settle(follow_up);
    }

    async fn load(&self, room: Arc<str>) -> Result<StoredRoom, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Closed)?;
            load_room(&conn, &room)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Always granted: the process that opened the file owns every room.
    async fn claim(&self, _room: Arc<str>) -> Result<Claim, StoreError> {
        Ok(Claim::Owned(Fence(0)))
    }

    async fn renew(&self, _room: Arc<str>, _fence: Fence) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release(&self, _room: Arc<str>, _fence: Fence) {}

    /// Stops the writer once everything queued before this call is
    /// committed, and checkpoints the WAL. Requests made afterwards fail.
    async fn close(&self) {
        self.writer.close().await;
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(format!("opening {}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql("setting the busy timeout"))?;
    // Fails here with "file is not a database" when the header is garbage.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(sql(format!("opening {}", path.display())))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL journal mode (got {mode})"),
        });
    }
    let synchronous = test_unsafe_synchronous().unwrap_or("FULL");
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sql(format!("setting synchronous={synchronous}")))?;
    Ok(conn)
}

/// TEST ONLY, never a setting: the environment variable that makes the relay
/// acknowledge writes it has not fsynced. `OFF` (`PRAGMA synchronous=OFF`):
/// SQLite never fsyncs; `NORMAL`: in WAL mode it fsyncs only at
/// checkpoints, which survives a killed process but not a power cut.
/// `tests/power_loss.rs` sets it to prove that its power-cut simulation
/// catches such a relay. Deliberately absent from `--help` and
/// docs/RELAY.md's settings; the relay logs a warning when it is set.
const TEST_UNSAFE_SYNCHRONOUS: &str = "CONCORD_TEST_UNSAFE_SYNCHRONOUS";

/// The `synchronous` mode [`TEST_UNSAFE_SYNCHRONOUS`] asks for, if any.
fn test_unsafe_synchronous() -> Option<&'static str> {
    let mode = match std::env::var(TEST_UNSAFE_SYNCHRONOUS).ok()?.as_str() {
        "OFF" => "OFF",
        "NORMAL" => "NORMAL",
        other => {
            tracing::warn!("{TEST_UNSAFE_SYNCHRONOUS}={other:?} ignored (OFF or NORMAL)");
            return None;
        }
    };
    tracing::warn!(
        "{TEST_UNSAFE_SYNCHRONOUS}={mode}: TEST ONLY, writes are acknowledged before they are \
         fsynced and are lost on power failure"
    );
    Some(mode)
}

/// `PRAGMA quick_check` and the schema version.
fn check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| corrupt(e.to_string()))?;
    let lines: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| corrupt(e.to_string()))?;
    if lines != ["ok"] {
        return Err(corrupt(lines.join("; ")));
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
        });
    }
    Ok(())
}

fn load_room(conn: &Connection, room: &str) -> Result<StoredRoom, StoreError> {
    let snapshot: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT through, bytes FROM snapshots WHERE room = ?1",
            params![room],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sql(format!("reading room {room:?}")))?;
    let snapshot = match snapshot {
        Some((through, bytes)) => Some((to_u64(through)?, bytes)),
        None => None,
    };
    let through = snapshot.as_ref().map_or(0, |(t, _)| *t);
    let mut stmt = conn
        .prepare_cached(
            "SELECT log_offset, op FROM entries WHERE room = ?1 AND log_offset > ?2 \
             ORDER BY log_offset",
        )
        .map_err(sql(format!("reading room {room:?}")))?;
    let rows = stmt
        .query_map(params![room, to_i64(through)], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(sql(format!("reading room {room:?}")))?;
    let mut entries = Vec::new();
    for row in rows {
        let (offset, op) = row.map_err(sql(format!("reading room {room:?}")))?;
        entries.push((to_u64(offset)?, op));
    }
    Ok((snapshot, entries))
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Offset(v))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A writer thread's loop, for either backend: takes groups of requests
/// (waiting for promised follow-ups), has `commit` write each group in one
/// transaction, completes the requests, until told to stop.
pub(crate) fn write_loop(
    queue: &WriteQueue<Job>,
    metrics: &Metrics,
    mut commit: impl FnMut(&[WriteRequest]) -> Vec<Result<(), String>>,
) {
    let mut jobs = Vec::new();
    let mut group = Vec::new();
    // Requests of the last group whose rooms promised to follow up.
    let mut awaited = Vec::new();
    let mut committed_at = Instant::now();
    let mut stop = false;
    while !stop {
        let missed = queue.take(
            &mut awaited,
            committed_at + MAX_FOLLOW_UP_WAIT,
            MAX_GROUP,
            &mut jobs,
        );
        metrics
            .follow_ups_missed
            .fetch_add(missed as u64, std::sync::atomic::Ordering::Relaxed);
        for job in jobs.drain(..) {
            match job {
                Job::Write(request) if !stop => group.push(request),
                // Queued after the stop: dropping it reports "stopped".
                Job::Write(_) => {}
                Job::Stop => stop = true,
            }
        }
        if group.is_empty() {
            continue;
        }
        let started = Instant::now();
        let results = commit(&group);
        metrics.commit_latency.observe(started.elapsed());
        metrics
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics
            .commit_requests
            .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (request, result) in group.drain(..).zip(results) {
            if result.is_ok() {
                let ops: usize = request.batches.iter().map(|b| b.append.len()).sum();
                metrics
                    .ops_stored
                    .fetch_add(ops as u64, std::sync::atomic::Ordering::Relaxed);
            }
            // Only a room whose write succeeded goes on; one that failed
            // closes instead.
            if request.follow_up.seal() && result.is_ok() {
                awaited.push(request.follow_up.clone());
            }
            let _ = request.done.send(result);
        }
        committed_at = Instant::now();
    }
    drop(queue.close());
    tracing::debug!("storage writer stopped");
}

/// Writes every request of the group in one transaction. A request that
/// fails is rolled back alone (savepoint) and reported; the others commit.
fn commit_group(conn: &mut Connection, group: &[WriteRequest]) -> Vec<Result<(), String>> {
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return vec![Err(format!("beginning a transaction: {e}")); group.len()],
    };
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let result = (|| -> rusqlite::Result<()> {
            let sp = tx.savepoint()?;
            for batch in &request.batches {
                apply(&sp, &request.room, batch)?;
            }
            sp.commit()
        })();
        results.push(result.map_err(|e| format!("writing room {:?}: {e}", request.room)));
    }
    if let Err(e) = tx.commit() {
        let message = format!("committing: {e}");
        return vec![Err(message); group.len()];
    }
    results
}

fn apply(conn: &Connection, room: &str, batch: &RoomPersist) -> rusqlite::Result<()> {
    if !batch.append.is_empty() {
        let mut insert =
            conn.prepare_cached("INSERT INTO entries (room, log_offset, op) VALUES (?1, ?2, ?3)")?;
        for (offset, op) in &batch.append {
            insert.execute(params![room, to_i64(*offset), &op[..]])?;
        }
    }
    if let Some((through, bytes)) = &batch.snapshot {
        conn.prepare_cached(
            "INSERT INTO snapshots (room, through, bytes) VALUES (?1, ?2, ?3) \
             ON CONFLICT (room) DO UPDATE SET through = excluded.through, bytes = excluded.bytes",
        )?
        .execute(params![room, to_i64(*through), &bytes[..]])?;
    }
    if let Some(through) = batch.truncate_through {
        conn.prepare_cached("DELETE FROM entries WHERE room = ?1 AND log_offset <= ?2")?
            .execute(params![room, to_i64(through)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42; 8192]).unwrap();
        let err = Store::open(dir.path(), Arc::new(Metrics::default()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a database"), "{err}");
    }
}
