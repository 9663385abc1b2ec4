//! [`SqliteStore`]: one client database in one SQLite file.
//!
//! # Durability
//!
//! The file is in WAL mode, and a write is answered only after its
//! commit's WAL frames are on stable storage (a sync of the WAL file;
//! `F_FULLFSYNC` on Apple platforms, where a plain `fsync` does not reach
//! the disk): a write whose call returned survives a crash of the process
//! and a power loss. SQLite itself runs with `synchronous=NORMAL`; the
//! syncs that make each commit durable run on threads of their own, so the
//! next commit is written while the disk works (see `Durability`).
//! Each persist batch is applied in a transaction of its own (a savepoint
//! inside the group transaction below), so it lands whole or not at all.
//!
//! # Group commit
//!
//! One writer thread owns the connection. Callers on any thread queue their
//! batches to it; it takes every batch that is queued, writes them all in one
//! transaction — one sync for many puts — and hands the commit to a syncer
//! thread, which answers each caller once the commit is on disk. Batches
//! that arrive while every syncer is busy wait for one to be free and go
//! together into the next commit. With no load a batch is committed and
//! synced at once. The host loop's writes carry the answer for the puts
//! waiting on them ([`ClientStore::write_notify`]): the syncer gives it
//! right after the sync, so a put's caller wakes without a hop through the
//! loop's thread. A batch
//! that fails is rolled back alone (its savepoint) and reported to its
//! caller; the others of its group still commit — except the host loop's
//! own writes, see below.
//!
//! # Writes in flight
//!
//! The host loop keeps up to [`WRITES_IN_FLIGHT`] writes queued here (see
//! [`ClientStore::max_writes_in_flight`]), so the next commit can start
//! while the loop is still answering the last one. Those writes keep
//! their order (one queue, one thread), and once one of them fails every
//! later one fails too without being applied, until the loop reads the
//! store back: the file always holds a prefix of what the loop issued.
//!
//! Reads (`read_all`, used when a database opens) go through the same
//! queue, so they see every write queued before them.
//!
//! # Exclusive access
//!
//! See [`SqliteStore::open`] for how a second opener is refused.
//!
//! # Copies
//!
//! The file records its own identity (device and inode number, on Unix).
//! A file opened under another identity — copied, restored from a backup,
//! moved to another file system — reports itself as
//! [`copied`](ClientStore::copied), so the database continues under a new
//! replica id instead of impersonating the original. The new identity is
//! recorded in the transaction of the first successful write (the one that
//! stores the new replica id), so a crash before it is detected again on
//! the next open. Moving or renaming the file within one file system keeps
//! its identity. Elsewhere than Unix the identity is not checked, and a
//! copy is caught only by the relay (`Event::StoreBehindRelay`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use sync_client::platform::{ClientStore, OnDurable, StoreError, StoreErrorKind};
use sync_core::persist::{PersistBatch, Write};
use sync_core::store::{Record, Store};

use chunks::{CHUNKED_SCHEMA, Chunks};

mod chunks;

/// Schema version kept in `PRAGMA user_version` of a new file; a file
/// holding a value across rows is marked [`CHUNKED_SCHEMA`], the newest
/// this build reads.
const SCHEMA_VERSION: i64 = 1;

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 1024;

/// Writes the host loop may keep queued to the writer thread at once. Two
/// already let the loop hand over the next batch while a commit runs; a few
/// more let puts arriving during one commit go to the next in several
/// pieces without waiting for an answer (the writer merges them again).
const WRITES_IN_FLIGHT: usize = 4;

/// How long SQLite waits for a lock held by a connection that ignores the
/// lock file (another tool opening the file by hand) before giving up with
/// `Locked`.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Suffix of the lock file next to the database file.
const LOCK_SUFFIX: &str = "-lock";

/// A durable key/value store for one client database, in one SQLite file.
///
/// Implements both [`ClientStore`] (the asynchronous form the host loop
/// uses: its futures resolve once the commit is synced to disk) and the
/// blocking [`Store`] of `sync-core`. Cheap to clone: clones share one
/// connection and one writer thread. When the last clone is dropped, the
/// writer commits everything still queued, closes the file and releases the
/// lock; the drop waits for that, so the same path can be opened again as
/// soon as it returns.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// What clones share: the queue to the writer thread.
struct Shared {
    path: PathBuf,
    /// The file's identity, while it differs from the one recorded in it.
    unrecorded_identity: PendingIdentity,
    /// `None` once closing.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        self.jobs = None;
        let thread = self.thread.get_mut().ok().and_then(Option::take);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Transactions committed.
    pub(crate) commits: AtomicU64,
    /// Batches written.
    pub(crate) batches: AtomicU64,
    /// Syncs of the WAL that completed.
    pub(crate) syncs: AtomicU64,
    /// While set, syncers wait before they sync (tests hold commits
    /// committed but not durable with it).
    #[cfg(test)]
    pub(crate) hold_syncs: Mutex<bool>,
    #[cfg(test)]
    pub(crate) syncs_released: Condvar,
    /// While set, syncers panic instead of syncing.
    #[cfg(test)]
    pub(crate) panic_syncs: std::sync::atomic::AtomicBool,
}

/// Where the database file is: what a copy of it does not share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: i64,
    inode: i64,
}

/// The file's identity while it is not recorded in the file yet: set when
/// a copy is opened, recorded and cleared by the first successful write.
type PendingIdentity = Arc<Mutex<Option<FileIdentity>>>;

/// A batch as the writer applies it, in order, its keys encoded.
type Rows = Vec<Row>;

/// One write of [`Rows`].
enum Row {
    /// A value under a key.
    Put(Vec<u8>, Vec<u8>),
    /// A key's removal.
    Delete(Vec<u8>),
    /// The removal of every key from the first to the last, both included.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// One write queued to the writer thread.
struct Batch {
    rows: Rows,
    /// Issued by the host loop ([`ClientStore::write`]), which may have
    /// later writes queued behind it that depend on it: after an ordered
    /// write fails, later ordered writes fail unapplied until the next read.
    ordered: bool,
    /// Called by a syncer thread right after the commit's sync, when both succeeded
    /// (see [`ClientStore::write_notify`]).
    on_durable: Option<OnDurable>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// What the writer thread is asked to do.
enum Job {
    Write(Batch),
    Read {
        done: oneshot::Sender<Result<Vec<Record>, StoreError>>,
    },
    #[cfg(test)]
    Inspect(Box<dyn FnOnce(&Connection) + Send>),
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file if needed (its
    /// directory must exist), and starts its writer thread. Blocking.
    ///
    /// Errors: [`StoreErrorKind::Locked`] when the database is open
    /// elsewhere — in another process, or already in this one;
    /// [`StoreErrorKind::Corrupt`] when the file is not a database of ours;
    /// [`StoreErrorKind::Full`] when the disk is full; otherwise
    /// [`StoreErrorKind::Io`].
    ///
    /// # Locking
    ///
    /// Next to the database, a lock file `<path>-lock` is opened and locked
    /// exclusively with std's [`File::try_lock`] (`flock` on Unix,
    /// `LockFileEx` on Windows), and held until the store closes. Why this
    /// and not only SQLite's own locks:
    ///
    /// - It refuses a second opener at once, before it touches the database,
    ///   with a typed `Locked` error, instead of letting it start and fail
    ///   (or wait) at its first read or write.
    /// - `flock` locks belong to an open file, not to a process, so a second
    ///   open inside the same process is refused too. SQLite's POSIX
    ///   advisory locks are per process, and a second process-local
    ///   connection would share our writes' WAL index instead.
    /// - The OS drops the lock when the holder dies (even by `kill -9`), so
    ///   a crash never leaves a database locked. The file itself stays (it
    ///   is empty); deleting it on close would race with the next opener.
    /// - It needs no dependency: the std API (Rust 1.89) is a thin wrapper
    ///   over the system call.
    ///
    /// The connection also runs in SQLite's `EXCLUSIVE` locking mode, for
    /// tools that open the file directly and know nothing of the lock file:
    /// after our first transaction they get `SQLITE_BUSY` instead of
    /// reading or writing under us. (As a bonus the WAL index then lives in
    /// memory, not in a `-shm` file.)
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let lock = lock(&path)?;
        let conn = open_connection(&path)?;
        let unrecorded_identity = Arc::new(Mutex::new(check_identity(&conn, &path)?));
        let chunks =
            Chunks::load(&conn).map_err(|e| sql_error("reading the schema of", &path, &e))?;
        let stats = Arc::new(Stats::default());
        let (jobs, queue) = mpsc::channel();
        let thread = {
            let stats = stats.clone();
            let identity = unrecorded_identity.clone();
            std::thread::Builder::new()
                .name("concord-sqlite-writer".into())
                .spawn(move || {
                    write_loop(conn, chunks, &queue, &stats, &identity);
                    // Released only once the connection is closed.
                    drop(lock);
                })
                .map_err(|e| io_error(format!("starting the writer thread: {e}"), &e))?
        };
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                path,
                unrecorded_identity,
                jobs: Some(jobs),
                thread: Mutex::new(Some(thread)),
                stats,
            }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Commit counters, for tests and benchmarks.
    #[allow(dead_code)] // Used by the unit tests and the `bench` module.
    pub(crate) fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.shared.jobs.as_ref().ok_or_else(closed)?;
        jobs.send(job).map_err(|_| closed())
    }

    /// Queues a write; the receiver answers once it is committed and synced.
    fn queue_write(
        &self,
        rows: Rows,
        ordered: bool,
        on_durable: Option<OnDurable>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, answer) = oneshot::channel();
        // A failed send drops `done`, which the receiver reports as closed.
        let _ = self.submit(Job::Write(Batch {
            rows,
            ordered,
            on_durable,
            done,
        }));
        answer
    }

    fn queue_read(&self) -> oneshot::Receiver<Result<Vec<Record>, StoreError>> {
        let (done, answer) = oneshot::channel();
        let _ = self.submit(Job::Read { done });
        answer
    }

    /// Runs `f` on the writer's connection, after everything queued before.
    #[cfg(test)]
    pub(crate) fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> T {
        let (done, answer) = std::sync::mpsc::channel();
        let job = Job::Inspect(Box::new(move |conn| {
            let _ = done.send(f(conn));
        }));
        assert!(self.submit(job).is_ok(), "writer stopped");
        answer.recv().expect("writer answers")
    }
}

fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Closed, "the store's writer has stopped")
}

/// Waits for the writer's answer; a dropped answer means it stopped.
async fn answer<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.unwrap_or_else(|_| Err(closed()))
}

impl ClientStore for SqliteStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let rx = self.queue_write(rows_owned(batch), true, None);
        Box::pin(answer(rx))
    }

    fn write_notify(
        &self,
        batch: PersistBatch,
        on_durable: OnDurable,
    ) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let rx = self.queue_write(rows_owned(batch), true, Some(on_durable));
        Box::pin(answer(rx))
    }

    fn max_writes_in_flight(&self) -> usize {
        WRITES_IN_FLIGHT
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        let rx = self.queue_read();
        Box::pin(answer(rx))
    }

    fn copied(&self) -> bool {
        self.shared
            .unrecorded_identity
            .lock()
            .map_or(true, |pending| pending.is_some())
    }
}

impl Store for SqliteStore {
    type Error = StoreError;

    fn write(&mut self, batch: &PersistBatch) -> Result<(), StoreError> {
        futures::executor::block_on(answer(self.queue_write(rows_borrowed(batch), false, None)))
    }

    fn read_all(&self) -> Result<Vec<Record>, StoreError> {
        futures::executor::block_on(answer(self.queue_read()))
    }
}

fn rows_owned(batch: PersistBatch) -> Rows {
    batch
        .writes
        .into_iter()
        .map(|write| match write {
            Write::Put { key, value } => Row::Put(key.to_bytes(), value),
            Write::Delete { key } => Row::Delete(key.to_bytes()),
            Write::DeleteRange { first, last } => {
                Row::DeleteRange(first.to_bytes(), last.to_bytes())
            }
        })
        .collect()
}

fn rows_borrowed(batch: &PersistBatch) -> Rows {
    batch
        .writes
        .iter()
        .map(|write| match write {
            Write::Put { key, value } => Row::Put(key.to_bytes(), value.clone()),
            Write::Delete { key } => Row::Delete(key.to_bytes()),
            Write::DeleteRange { first, last } => {
                Row::DeleteRange(first.to_bytes(), last.to_bytes())
            }
        })
        .collect()
}

/// The kind of a SQLite failure.
fn kind_of(e: &rusqlite::Error) -> StoreErrorKind {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreErrorKind::Locked,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreErrorKind::Corrupt,
        Some(ErrorCode::DiskFull) => StoreErrorKind::Full,
        _ => StoreErrorKind::Io,
    }
}

/// A SQLite failure while doing `what`, with advice by kind.
fn sql_error(what: &str, path: &Path, e: &rusqlite::Error) -> StoreError {
    let kind = kind_of(e);
    let advice = match kind {
        StoreErrorKind::Locked => "; another program holds the database: close it there first",
        StoreErrorKind::Corrupt => {
            "; restore it from a backup, or move it away to start empty (the data then resyncs from the relay)"
        }
        StoreErrorKind::Full => "; free some space and retry",
        _ => "",
    };
    StoreError::new(kind, format!("{what} {}: {e}{advice}", path.display()))
}

fn io_error(message: String, e: &std::io::Error) -> StoreError {
    let kind = match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => StoreErrorKind::Full,
        _ => StoreErrorKind::Io,
    };
    StoreError::new(kind, message)
}

/// Takes the OS lock on `<path>-lock` (see [`SqliteStore::open`]).
fn lock(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(LOCK_SUFFIX);
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            io_error(
                format!("opening lock file {}: {e}", lock_path.display()),
                &e,
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::new(
            StoreErrorKind::Locked,
            format!(
                "database {} is already open (in another process, or elsewhere in this one): \
                 close it there first",
                path.display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(io_error(
            format!("locking {}: {e}", lock_path.display()),
            &e,
        )),
    }
}

/// Opens the connection and prepares the schema.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let opening = |e: rusqlite::Error| sql_error("opening", path, &e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    // Before WAL mode, so the WAL index lives in memory (see `open`).
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(opening)?;
    // The first statement that reads the file: a garbage header fails here
    // with "file is not a database".
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(opening)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::new(
            StoreErrorKind::Io,
            format!(
                "opening {}: cannot switch to WAL journal mode (got {mode})",
                path.display()
            ),
        ));
    }
    // Commits are synced by the syncers before anyone is answered (see
    // `Durability`); SQLite syncs around checkpoints and WAL restarts.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(opening)?;
    // The savepoints of a group with a failing batch journal the pages they
    // change to a temporary file by default; memory is enough for one group.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(opening)?;
    // Apple's fsync does not flush the drive's cache; F_FULLFSYNC does.
    // Elsewhere these are no-ops.
    conn.pragma_update(None, "fullfsync", true)
        .map_err(opening)?;
    conn.pragma_update(None, "checkpoint_fullfsync", true)
        .map_err(opening)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(opening)?;
    if version > CHUNKED_SCHEMA {
        return Err(StoreError::new(
            StoreErrorKind::Io,
            format!(
                "database {} has schema version {version}, written by a newer Concord; \
                 this build reads up to version {CHUNKED_SCHEMA}: update the app",
                path.display()
            ),
        ));
    }
    // BLOB keys compare with memcmp, shorter first on a tie: byte order.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS records (
             key BLOB PRIMARY KEY NOT NULL,
             value BLOB NOT NULL
         ) STRICT, WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS identity (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             device INTEGER NOT NULL,
             inode INTEGER NOT NULL
         ) STRICT;",
    )
    .and_then(|()| conn.execute_batch(chunks::CREATE_TABLE))
    .map_err(|e| sql_error("creating the schema in", path, &e))?;
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| sql_error("setting the schema version of", path, &e))?;
    }
    Ok(conn)
}

/// The writer thread: group commit until every handle is gone.
///
/// A group is everything queued when a syncer is free to take it. The
/// writer does not wait for the callers of the last group to come back:
/// with several syncs in flight (see [`Durability`]), the first callers
/// back are committed and synced while the others are still on their way
/// through the host loop, so a put's CPU (loop, SQLite) overlaps another
/// commit's sync instead of adding to it. Waiting for them, as this thread
/// did when syncs ran one at a time, kept every caller in the same commit
/// and left the CPU idle during each sync (8 writers on this project's
/// disk and on tmpfs, paired runs: about a tenth more puts per second
/// without the wait).
fn write_loop(
    conn: Connection,
    chunks: Chunks,
    queue: &mpsc::Receiver<Job>,
    stats: &Stats,
    identity: &PendingIdentity,
) {
    let path = conn.path().map(PathBuf::from).unwrap_or_default();
    let durability = Arc::new(Durability::new(&path));
    let mut writer = Writer { conn, chunks, path };
    std::thread::scope(|scope| {
        for n in 0..SYNCERS {
            let syncer = durability.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("concord-sqlite-sync-{n}"))
                .stack_size(SYNCER_STACK)
                .spawn_scoped(scope, move || syncer.sync_loop(stats));
            if spawned.is_err() && n == 0 {
                // Without a syncer nothing would become durable: fail the
                // writes instead of leaving them waiting.
                durability.fail(StoreError::new(
                    StoreErrorKind::Io,
                    "cannot start the store's sync thread",
                ));
            }
        }
        // Closed however the loop ends: if it panics, the scope joins the
        // syncers before the panic goes on, and they stop only once closed
        // (else the store's drop would wait for this thread forever).
        let _close = CloseOnDrop(&durability);
        group_commit(&mut writer, queue, stats, identity, &durability);
    });
    // Fold the WAL back into the database so the next open reads less.
    let _ = writer
        .conn
        .pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// What the writer thread writes with.
struct Writer {
    conn: Connection,
    /// Which keys have values across rows.
    chunks: Chunks,
    /// The database file, for error messages.
    path: PathBuf,
}

/// Closes the [`Durability`] when dropped, also while unwinding.
struct CloseOnDrop<'a>(&'a Durability);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// [`write_loop`]'s loop, handing each commit to the syncers.
fn group_commit(
    writer: &mut Writer,
    queue: &mpsc::Receiver<Job>,
    stats: &Stats,
    identity: &PendingIdentity,
    durability: &Durability,
) {
    let mut jobs = Vec::new();
    let mut group: Vec<Batch> = Vec::new();
    // Set when an ordered write fails; cleared by the next read.
    let mut failed: Option<StoreError> = None;
    while let Ok(first) = queue.recv() {
        // A commit no syncer can take yet would only wait for one, and
        // cost its pages again in the next commit: gather until one is free.
        durability.wait_for_syncer();
        jobs.push(first);
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        for job in jobs.drain(..) {
            match job {
                Job::Write(batch) => group.push(batch),
                Job::Read { done } => {
                    // Writes queued before the read are committed first,
                    // and durable: what a read returns may be sent on.
                    commit_group(writer, &mut group, stats, identity, durability, &mut failed);
                    let read = durability.wait_durable().and_then(|()| read_all(writer));
                    // The loop reads back after a failure: it writes on
                    // from what this read returns.
                    failed = None;
                    let _ = done.send(read);
                }
                #[cfg(test)]
                Job::Inspect(f) => {
                    commit_group(writer, &mut group, stats, identity, durability, &mut failed);
                    f(&writer.conn);
                }
            }
        }
        commit_group(writer, &mut group, stats, identity, durability, &mut failed);
    }
}

/// Writes every batch of the group in one transaction and hands the
/// answers to the syncers, which give them once the commit is durable.
fn commit_group(
    writer: &mut Writer,
    group: &mut Vec<Batch>,
    stats: &Stats,
    identity: &PendingIdentity,
    durability: &Durability,
    failed: &mut Option<StoreError>,
) {
    if group.is_empty() {
        return;
    }
    // After a failed sync nothing written can be known durable.
    if let Some(e) = durability.failure() {
        if failed.is_none() && group.iter().any(|batch| batch.ordered) {
            *failed = Some(e.clone());
        }
        for batch in group.drain(..) {
            let _ = batch.done.send(Err(e.clone()));
        }
        return;
    }
    let unrecorded = identity.lock().ok().and_then(|pending| *pending);
    let (results, recorded) = write_group(writer, group, unrecorded, failed);
    if recorded && let Ok(mut pending) = identity.lock() {
        *pending = None;
    }
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats
        .batches
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    let answers = group
        .drain(..)
        .zip(results)
        .map(|(batch, result)| Answer {
            result,
            on_durable: batch.on_durable,
            done: batch.done,
        })
        .collect();
    durability.committed(answers);
}

/// Syncs of the WAL that may run at once (see [`Durability`]). Paired runs
/// of 8 writers on this project's disks: four syncers 1.5–2.2 times the
/// rate of two in three pairs of four (load 11–13); one is the old
/// serial fsync.
const SYNCERS: usize = 4;

/// A syncer only waits and calls `fdatasync`: a small stack is plenty.
const SYNCER_STACK: usize = 128 * 1024;

/// The answer to one batch, given once its commit is durable.
struct Answer {
    result: Result<(), StoreError>,
    on_durable: Option<OnDurable>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Answer {
    fn give(self, failure: Option<&StoreError>) {
        let result = match failure {
            Some(e) => Err(e.clone()),
            None => self.result,
        };
        // The callers waiting on the loop's write first: they are what a
        // put's latency is measured by, and the loop hears of it anyway.
        // Ordered writes succeed only after every earlier one did (see
        // `write_group`), and commits become durable in order, which
        // `on_durable` requires.
        if result.is_ok()
            && let Some(on_durable) = self.on_durable
        {
            on_durable.call();
        }
        let _ = self.done.send(result);
    }
}

/// Makes commits durable off the writer thread.
///
/// The connection runs with `synchronous=NORMAL`: SQLite writes a commit's
/// WAL frames without syncing them (it still syncs the WAL before a
/// checkpoint copies it into the database, the database after, and the
/// WAL's header when it starts over). Each commit is then made durable by
/// a sync of the WAL file (`fdatasync`; `F_FULLFSYNC` on Apple platforms)
/// on one of [`SYNCERS`] threads, and only then are its callers answered:
/// a write is durable when its call returns, as with `synchronous=FULL`,
/// but the writer thread goes on to the next commit while the disk works,
/// and up to [`SYNCERS`] syncs are in flight at once. On this project's
/// virtual disks a lone sync takes 4–6 ms while overlapping ones complete
/// far sooner, so overlapping them is most of a put's latency.
///
/// A sync covers everything written to the file before it started, so a
/// sync started after commit `n` makes every commit up to `n` durable;
/// callers are answered in commit order. A sync that fails leaves memory
/// (SQLite's view of the file) ahead of the disk: every commit not known
/// durable fails, and so does every later write and read, until the
/// database is reopened.
struct Durability {
    wal_path: PathBuf,
    state: Mutex<SyncState>,
    /// Syncers wait here for a commit to sync (one is woken per commit).
    work: Condvar,
    /// The writer waits here for a sync to end.
    progress: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Commits made so far (numbered from 1).
    committed: u64,
    /// The last commit a sync was started for.
    requested: u64,
    /// Syncs running.
    syncing: usize,
    /// The writer waits on `progress`.
    writer_waits: bool,
    /// The last commit known durable.
    durable: u64,
    /// Answers of commits not yet durable, by commit number.
    waiting: VecDeque<(u64, Vec<Answer>)>,
    /// A sync started with no other running, and wants a second sync of
    /// the same commit beside it, from another syncer. On this project's
    /// virtual disks (ext4 on virtio) a lone `fdatasync` takes 3–4 ms,
    /// while two started together both end in about 0.4 ms (a Python
    /// probe of 200 syncs of a 4 KiB overwrite, p50 2.8 → 0.38 ms, load
    /// 5); elsewhere the second one finds nothing left to write and costs
    /// one system call. Whichever ends first answers the commit.
    companion: bool,
    failed: Option<StoreError>,
    closing: bool,
}

impl Durability {
    fn new(path: &Path) -> Durability {
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        Durability {
            wal_path: PathBuf::from(wal_path),
            state: Mutex::new(SyncState::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failure(&self) -> Option<StoreError> {
        self.lock().failed.clone()
    }

    /// Queues the answers of the commit just made, for the next sync.
    fn committed(&self, answers: Vec<Answer>) {
        let mut state = self.lock();
        state.committed += 1;
        let commit = state.committed;
        state.waiting.push_back((commit, answers));
        let idle = state.syncing < SYNCERS;
        drop(state);
        if idle {
            self.work.notify_one();
        }
    }

    /// Waits until a syncer is free to sync the next commit at once (or
    /// the syncers failed).
    fn wait_for_syncer(&self) {
        let mut state = self.lock();
        while state.syncing >= SYNCERS && state.failed.is_none() {
            state = self.wait_progress(state);
        }
    }

    /// Waits until every commit so far is durable.
    fn wait_durable(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        loop {
            if let Some(e) = &state.failed {
                return Err(e.clone());
            }
            if state.durable >= state.committed {
                return Ok(());
            }
            state = self.wait_progress(state);
        }
    }

    /// The writer's wait for the end of a sync.
    fn wait_progress<'a>(&self, mut state: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        state.writer_waits = true;
        let mut state = self
            .progress
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.writer_waits = false;
        state
    }

    /// Fails everything waiting and everything from now on.
    fn fail(&self, e: StoreError) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(e);
        }
        let failure = state.failed.clone();
        for (_, answers) in state.waiting.drain(..) {
            for answer in answers {
                answer.give(failure.as_ref());
            }
        }
        drop(state);
        self.work.notify_all();
        self.progress.notify_all();
    }

    /// Lets the syncers finish what is committed, then stop.
    fn close(&self) {
        self.lock().closing = true;
        self.work.notify_all();
    }

    /// One syncer: syncs the WAL whenever a commit waits for it, until
    /// closed. A syncer that panics has taken a commit to sync and may hold
    /// answers it would have given: it fails the store (as a failed sync
    /// does), which answers every waiting caller with the error instead of
    /// leaving them to wait for a sync that never comes.
    fn sync_loop(&self, stats: &Stats) {
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.sync_commits(stats);
        }));
        if synced.is_err() {
            self.fail(StoreError::new(
                StoreErrorKind::Io,
                "the store's sync thread panicked; the writes since the last sync may be lost: \
                 reopen the database",
            ));
        }
    }

    /// [`Durability::sync_loop`]'s loop.
    fn sync_commits(&self, stats: &Stats) {
        // A handle of its own: Linux reports a write-back error once per
        // open file, so syncers sharing one handle could see a sync that
        // overlapped a failed one return Ok, and answer its commit as
        // durable. Each handle sees every error from its opening on.
        let mut wal: Option<File> = None;
        let mut state = self.lock();
        loop {
            let fresh = state.committed > state.requested;
            if (fresh || state.companion) && state.failed.is_none() {
                let target = state.committed;
                state.requested = target;
                if fresh && state.syncing == 0 {
                    // A lone sync: ask for a companion (see `companion`).
                    state.companion = true;
                    self.work.notify_one();
                } else {
                    state.companion = false;
                }
                state.syncing += 1;
                drop(state);
                #[cfg(test)]
                stats.wait_while_syncs_held();
                #[cfg(test)]
                assert!(
                    !stats.panic_syncs.load(Ordering::Relaxed),
                    "a syncer fails on purpose"
                );
                let synced = self.sync(&mut wal);
                state = self.lock();
                state.syncing -= 1;
                match synced {
                    Ok(()) => {
                        stats.syncs.fetch_add(1, Ordering::Relaxed);
                        state.durable = state.durable.max(target);
                        // Answered under the lock, so callers hear of
                        // their commits in order.
                        while state
                            .waiting
                            .front()
                            .is_some_and(|(commit, _)| *commit <= target)
                        {
                            if let Some((_, answers)) = state.waiting.pop_front() {
                                answers.into_iter().for_each(|a| a.give(None));
                            }
                        }
                        if state.writer_waits {
                            self.progress.notify_all();
                        }
                    }
                    Err(e) => {
                        drop(state);
                        self.fail(e);
                        state = self.lock();
                    }
                }
                continue;
            }
            if state.closing && (state.committed <= state.requested || state.failed.is_some()) {
                // Another syncer may still be finishing the last sync.
                return;
            }
            state = self
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Syncs the WAL file's data to the disk.
    fn sync(&self, wal: &mut Option<File>) -> Result<(), StoreError> {
        let failed = |e: std::io::Error| {
            io_error(
                format!(
                    "syncing {} to the disk: {e}; the writes since the last sync may be lost: \
                     reopen the database",
                    self.wal_path.display()
                ),
                &e,
            )
        };
        let wal = match wal {
            Some(wal) => wal,
            // SQLite keeps the WAL file (same inode) while the connection
            // is open in exclusive mode: a handle serves every later sync.
            None => wal.insert(
                OpenOptions::new()
                    .write(true)
                    .open(&self.wal_path)
                    .map_err(failed)?,
            ),
        };
        wal.sync_data().map_err(failed)
    }
}

#[cfg(test)]
impl Stats {
    fn wait_while_syncs_held(&self) {
        let mut held = self.hold_syncs.lock().unwrap();
        while *held {
            held = self.syncs_released.wait(held).unwrap();
        }
    }
}

/// Also records `unrecorded` (the file's new identity) with the first batch
/// that succeeds, and says whether it was committed. An ordered batch that
/// fails sets `failed`; while it is set, ordered batches fail unapplied.
///
/// Almost every group succeeds whole, so it is first written as one plain
/// transaction ([`write_group_whole`]). A savepoint per batch would cost
/// every commit a parsed statement pair and a sub-journal copy of each page
/// it touches (a sixth of this thread's time in a profile of 8 writers)
/// only to serve the rare failure; when a batch fails, the transaction is
/// rolled back and the group written again batch by batch
/// ([`write_group_each`]), which isolates the failure as before.
fn write_group(
    writer: &mut Writer,
    group: &[Batch],
    unrecorded: Option<FileIdentity>,
    failed: &mut Option<StoreError>,
) -> (Vec<Result<(), StoreError>>, bool) {
    if failed.is_none() {
        match write_group_whole(writer, group, unrecorded) {
            Ok(()) => return (vec![Ok(()); group.len()], unrecorded.is_some()),
            Err(Whole::Commit(e)) => {
                let e = sql_error("committing to", &writer.path, &e);
                if group.iter().any(|batch| batch.ordered) {
                    *failed = Some(e.clone());
                }
                return (vec![Err(e); group.len()], false);
            }
            // Rolled back: nothing of it is written; find out which batch
            // fails, writing the others.
            Err(Whole::Batch) => {}
        }
    }
    write_group_each(writer, group, unrecorded, failed)
}

/// Why [`write_group_whole`] did not commit.
enum Whole {
    /// A statement failed; the transaction is rolled back.
    Batch,
    /// `COMMIT` failed (the disk refused the transaction as a whole); it is
    /// rolled back.
    Commit(rusqlite::Error),
}

/// Writes the whole group in one transaction, without savepoints, through
/// cached statements; rolls back on any failure.
fn write_group_whole(
    writer: &mut Writer,
    group: &[Batch],
    unrecorded: Option<FileIdentity>,
) -> Result<(), Whole> {
    let Writer { conn, chunks, .. } = writer;
    let run = |sql: &str| -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let rollback = || {
        if !conn.is_autocommit() {
            let _ = run("ROLLBACK");
        }
    };
    run("BEGIN").map_err(|_| Whole::Batch)?;
    let written = (|| -> rusqlite::Result<()> {
        for batch in group {
            chunks.write(conn, &batch.rows)?;
        }
        if let Some(identity) = unrecorded {
            record_identity(conn, identity)?;
        }
        Ok(())
    })();
    if written.is_err() {
        rollback();
        return Err(Whole::Batch);
    }
    run("COMMIT").map_err(|e| {
        rollback();
        Whole::Commit(e)
    })
}

/// [`write_group`] for a group that may hold a failing batch: each batch
/// in a savepoint of its own, so a failure rolls back that batch alone.
fn write_group_each(
    writer: &mut Writer,
    group: &[Batch],
    mut unrecorded: Option<FileIdentity>,
    failed: &mut Option<StoreError>,
) -> (Vec<Result<(), StoreError>>, bool) {
    let any_ordered = group.iter().any(|batch| batch.ordered);
    let count = group.len();
    // The whole transaction failed: nothing of the group was written.
    let all = |failed: &mut Option<StoreError>, e: StoreError| {
        if any_ordered && failed.is_none() {
            *failed = Some(e.clone());
        }
        (vec![Err(e); count], false)
    };
    let mut recorded = false;
    let Writer { conn, chunks, path } = writer;
    let path = path.as_path();
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return all(failed, sql_error("beginning a transaction on", path, &e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for batch in group {
        if batch.ordered
            && let Some(earlier) = failed.as_ref()
        {
            results.push(Err(StoreError::new(
                earlier.kind,
                format!("not written: an earlier write failed ({earlier})"),
            )));
            continue;
        }
        let result = (|| -> rusqlite::Result<()> {
            let sp = tx.savepoint()?;
            chunks.write(&sp, &batch.rows)?;
            if let Some(identity) = unrecorded {
                record_identity(&sp, identity)?;
            }
            sp.commit()
        })();
        match result {
            Ok(()) => {
                recorded |= unrecorded.take().is_some();
                results.push(Ok(()));
            }
            // On some errors (a full disk, an IO error) SQLite rolls back the
            // whole transaction, not just the savepoint: nothing of the group
            // was written, and every batch reports this error.
            Err(e) if tx.is_autocommit() => {
                return all(failed, sql_error("writing to", path, &e));
            }
            Err(e) => {
                let e = sql_error("writing to", path, &e);
                if batch.ordered {
                    *failed = Some(e.clone());
                }
                results.push(Err(e));
            }
        }
    }
    if let Err(e) = tx.commit() {
        return all(failed, sql_error("committing to", path, &e));
    }
    (results, recorded)
}

/// The identity of the file at `path`, where the platform has one.
#[cfg(unix)]
fn file_identity(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    // Stored as SQLite integers; the bits matter, not the sign.
    Some(FileIdentity {
        device: meta.dev() as i64,
        inode: meta.ino() as i64,
    })
}

/// The identity of the file at `path`, where the platform has one.
#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<FileIdentity> {
    None
}

/// Compares the file's identity with the one recorded in it. Returns the
/// identity to record when they differ (the file is a copy); records it at
/// once in a file that has none yet (new, or written by an older build).
fn check_identity(conn: &Connection, path: &Path) -> Result<Option<FileIdentity>, StoreError> {
    let Some(current) = file_identity(path) else {
        return Ok(None);
    };
    let failed = |e: rusqlite::Error| sql_error("checking the identity of", path, &e);
    let stored = conn
        .query_row(
            "SELECT device, inode FROM identity WHERE id = 0",
            [],
            |row| {
                Ok(FileIdentity {
                    device: row.get(0)?,
                    inode: row.get(1)?,
                })
            },
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(failed(e)),
        })?;
    match stored {
        Some(stored) if stored == current => Ok(None),
        Some(_) => Ok(Some(current)),
        None => {
            record_identity(conn, current).map_err(failed)?;
            Ok(None)
        }
    }
}

fn record_identity(conn: &Connection, identity: FileIdentity) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO identity (id, device, inode) VALUES (0, ?1, ?2)")?
        .execute(params![identity.device, identity.inode])?;
    Ok(())
}

fn read_all(writer: &mut Writer) -> Result<Vec<Record>, StoreError> {
    writer
        .chunks
        .read_all(&writer.conn)
        .map_err(|e| sql_error("reading", &writer.path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::persist::StoreKey;

    fn doc(id: &str) -> StoreKey {
        StoreKey::Document {
            collection: "c".into(),
            id: id.into(),
        }
    }

    fn put(id: &str, value: &[u8]) -> Write {
        Write::Put {
            key: doc(id),
            value: value.to_vec(),
        }
    }

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(dir.path().join("db.sqlite3")).unwrap()
    }

    #[test]
    fn durable_settings_are_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (journal, synchronous, locking) = store.inspect(|conn| {
            let text = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap();
            (
                text("PRAGMA journal_mode"),
                conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                    .unwrap(),
                text("PRAGMA locking_mode"),
            )
        });
        assert_eq!(journal, "wal");
        // NORMAL: the syncers make each commit durable (see `Durability`).
        assert_eq!(synchronous, 1, "synchronous must be NORMAL (1)");
        assert_eq!(locking, "exclusive");
    }

    #[test]
    fn concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let threads = 8;
        let per_thread = 40;
        std::thread::scope(|s| {
            for t in 0..threads {
                let mut store = store.clone();
                s.spawn(move || {
                    for i in 0..per_thread {
                        let batch = PersistBatch {
                            writes: vec![put(&format!("{t}-{i}"), b"v")],
                        };
                        Store::write(&mut store, &batch).unwrap();
                    }
                });
            }
        });
        let batches = store.stats().batches.load(Ordering::Relaxed);
        let commits = store.stats().commits.load(Ordering::Relaxed);
        assert_eq!(batches, threads * per_thread);
        assert!(
            commits * 2 <= batches,
            "group commit: {batches} batches took {commits} commits"
        );
        assert_eq!(
            Store::read_all(&store).unwrap().len() as u64,
            threads * per_thread
        );
    }

    /// Makes every record write of a value over 1,000 bytes fail, as a
    /// full disk or a constraint would: a failure injected into SQLite
    /// itself, on the writer's connection.
    fn refuse_values_over_1000_bytes(store: &SqliteStore) {
        store.inspect(|conn| {
            conn.execute_batch(
                "CREATE TEMP TRIGGER refuse_big BEFORE INSERT ON main.records \
                 WHEN length(NEW.value) > 1000 BEGIN SELECT RAISE(ABORT, 'too big'); END;",
            )
            .unwrap();
        });
    }

    #[test]
    fn a_failing_loop_write_fails_the_later_ones_until_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        refuse_values_over_1000_bytes(&store);
        let good = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("ok", b"1")],
            },
        );
        let bad = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("a", b"small"), put("b", &[7; 5000])],
            },
        );
        let also_good = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("ok2", b"2")],
            },
        );
        futures::executor::block_on(async {
            good.await.unwrap();
            let err = bad.await.unwrap_err();
            assert_eq!(err.kind, StoreErrorKind::Io, "{err}");
            // Issued behind the failed write, it depended on it: it fails
            // unapplied, so the file holds a prefix of the loop's writes.
            let err = also_good.await.unwrap_err();
            assert!(err.message.contains("an earlier write failed"), "{err}");
        });
        let keys = |store: &SqliteStore| -> Vec<Vec<u8>> {
            Store::read_all(store)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(&store), vec![doc("ok").to_bytes()]);
        // The loop writes again after reading the store back.
        let again = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("ok3", b"3")],
            },
        );
        futures::executor::block_on(again).unwrap();
        assert_eq!(
            keys(&store),
            vec![doc("ok").to_bytes(), doc("ok3").to_bytes()]
        );
    }

    #[test]
    fn the_writer_answers_the_callers_of_committed_loop_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        refuse_values_over_1000_bytes(&store);
        let (told, heard) = std::sync::mpsc::channel();
        let notify = |name: &'static str| {
            let told = told.clone();
            OnDurable::new(move || {
                let _ = told.send(name);
            })
        };
        let write =
            |writes, name| ClientStore::write_notify(&store, PersistBatch { writes }, notify(name));
        let good = write(vec![put("ok", b"1")], "good");
        let bad = write(vec![put("b", &[7; 5000])], "bad");
        let after = write(vec![put("ok2", b"2")], "after");
        // No future is polled: the writer thread answers by itself once
        // the commit is done (the timeout only guards against a hang).
        assert_eq!(heard.recv_timeout(Duration::from_secs(60)), Ok("good"));
        futures::executor::block_on(async {
            good.await.unwrap();
            bad.await.unwrap_err();
            after.await.unwrap_err();
        });
        // A failed write, and one failed behind it, answer nobody durable.
        drop(told);
        assert_eq!(heard.try_iter().collect::<Vec<_>>(), Vec::<&str>::new());
    }

    /// Holds the writer thread until the returned sender is dropped or
    /// sent to, so that what is queued meanwhile forms one group. Returns
    /// once the writer is held: a job queued before that could still join
    /// the holding job's own round and be committed alone.
    fn hold_writer(store: &SqliteStore) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, waiting) = std::sync::mpsc::channel::<()>();
        let job = Job::Inspect(Box::new(move |_| {
            let _ = entered.send(());
            let _ = held.recv();
        }));
        assert!(store.submit(job).is_ok(), "writer stopped");
        waiting.recv().expect("the writer runs the holding job");
        release
    }

    #[test]
    fn a_failing_batch_in_a_group_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        refuse_values_over_1000_bytes(&store);
        let commits = store.stats().commits.load(Ordering::Relaxed);
        let release = hold_writer(&store);
        let write =
            |writes| answer(store.queue_write(rows_owned(PersistBatch { writes }), false, None));
        let first = write(vec![put("first", b"1")]);
        let bad = write(vec![put("a", b"small"), put("b", &[7; 5000])]);
        let last = write(vec![put("last", b"2")]);
        drop(release);
        let (first, bad, last) =
            futures::executor::block_on(async { (first.await, bad.await, last.await) });
        // One group, tried whole first: the failure must not take the
        // other batches with it, nor leave half of itself behind.
        assert_eq!(store.stats().commits.load(Ordering::Relaxed), commits + 1);
        first.unwrap();
        assert_eq!(bad.unwrap_err().kind, StoreErrorKind::Io);
        last.unwrap();
        let keys: Vec<Vec<u8>> = Store::read_all(&store)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![doc("first").to_bytes(), doc("last").to_bytes()]);
    }

    #[test]
    fn a_write_is_answered_only_once_its_commit_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let stats = store.stats();
        *stats.hold_syncs.lock().unwrap() = true;
        let (told, heard) = std::sync::mpsc::channel();
        let mut write = ClientStore::write_notify(
            &store,
            PersistBatch {
                writes: vec![put("a", b"1")],
            },
            OnDurable::new(move || {
                let _ = told.send(());
            }),
        );
        // Committed (visible to reads on the connection), not yet synced.
        let seen = store.inspect(|conn| {
            conn.query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0))
                .unwrap()
        });
        assert_eq!(seen, 1);
        assert_eq!(stats.commits.load(Ordering::Relaxed), 1);
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 0);
        // Nobody is told it is durable while its sync is held.
        assert!(futures::FutureExt::now_or_never(&mut write).is_none());
        assert!(heard.try_recv().is_err());
        *stats.hold_syncs.lock().unwrap() = false;
        stats.syncs_released.notify_all();
        futures::executor::block_on(write).unwrap();
        heard.recv().unwrap();
        assert!(stats.syncs.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn a_failing_blocking_write_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        refuse_values_over_1000_bytes(&store);
        let bad = PersistBatch {
            writes: vec![put("a", b"small"), put("b", &[7; 5000])],
        };
        assert_eq!(
            Store::write(&mut store, &bad).unwrap_err().kind,
            StoreErrorKind::Io
        );
        // Blocking writers are independent of each other: no later write
        // depends on the failed one.
        let good = PersistBatch {
            writes: vec![put("ok", b"1")],
        };
        Store::write(&mut store, &good).unwrap();
        let stored = Store::read_all(&store).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, doc("ok").to_bytes());
    }

    #[test]
    fn a_full_database_is_full_and_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        // SQLite answers SQLITE_FULL once the file would pass this size,
        // as it does when the disk is full.
        store.inspect(|conn| {
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages + 4)
                .unwrap();
        });
        let big = PersistBatch {
            writes: vec![put("big", &[1; 200_000])],
        };
        let err = Store::write(&mut store, &big).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Full, "{err}");
        assert!(err.message.contains("free some space"), "{err}");
        // Small writes still fit, and nothing of the failed batch is there.
        let small = PersistBatch {
            writes: vec![put("small", b"1")],
        };
        Store::write(&mut store, &small).unwrap();
        assert_eq!(Store::read_all(&store).unwrap().len(), 1);
        // Grouped with a batch that fills the disk, a batch may be rolled
        // back with it; what it is told must match what is stored.
        let x = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("x", b"1")],
            },
        );
        let big = ClientStore::write(&store, big);
        let y = ClientStore::write(
            &store,
            PersistBatch {
                writes: vec![put("y", b"1")],
            },
        );
        let (x, big, y) = futures::executor::block_on(async { (x.await, big.await, y.await) });
        assert_eq!(big.unwrap_err().kind, StoreErrorKind::Full);
        let stored = Store::read_all(&store).unwrap();
        for (id, told) in [("x", x), ("y", y)] {
            let present = stored.iter().any(|(k, _)| *k == doc(id).to_bytes());
            assert_eq!(
                told.is_ok(),
                present,
                "{id}: told {told:?}, stored: {present}"
            );
        }
    }

    /// Runs `f` on a thread of its own; `None` if it has not returned
    /// within a minute (a hang guard, not a timing assertion).
    fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(f());
        });
        finished.recv_timeout(Duration::from_secs(60)).ok()
    }

    #[test]
    fn a_writer_that_panics_still_lets_the_store_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let write = store.queue_write(
            rows_owned(PersistBatch {
                writes: vec![put("a", b"1")],
            }),
            false,
            None,
        );
        futures::executor::block_on(answer(write)).unwrap();
        // The writer thread dies (a bug, a panic in SQLite's wrapper): the
        // syncers must stop with it, or dropping the store waits forever.
        let job = Job::Inspect(Box::new(|_| panic!("the writer fails on purpose")));
        assert!(store.submit(job).is_ok(), "writer stopped");
        let later = store.queue_write(
            rows_owned(PersistBatch {
                writes: vec![put("b", b"2")],
            }),
            false,
            None,
        );
        let closed = returns(move || {
            drop(store);
            futures::executor::block_on(answer(later))
        });
        let later = closed.expect("dropping the store returns");
        assert_eq!(later.unwrap_err().kind, StoreErrorKind::Closed);
        // The lock is released: the database opens again, with what was
        // durable.
        let store = open(&dir);
        assert_eq!(Store::read_all(&store).unwrap().len(), 1);
    }

    #[test]
    fn a_syncer_that_panics_fails_its_callers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        Store::write(
            &mut store.clone(),
            &PersistBatch {
                writes: vec![put("a", b"1")],
            },
        )
        .unwrap();
        store.stats().panic_syncs.store(true, Ordering::Relaxed);
        let (told, heard) = std::sync::mpsc::channel();
        let write = store.queue_write(
            rows_owned(PersistBatch {
                writes: vec![put("b", b"2")],
            }),
            true,
            Some(OnDurable::new(move || {
                let _ = told.send(());
            })),
        );
        // Without a later commit to sync, nobody would answer this one.
        let answered = returns(move || futures::executor::block_on(answer(write)));
        let err = answered.expect("the write is answered").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Io, "{err}");
        assert!(err.message.contains("panicked"), "{err}");
        assert!(heard.try_recv().is_err(), "told durable: {err}");
        // Later writes fail at once, and the store still closes.
        let later = Store::write(
            &mut store.clone(),
            &PersistBatch {
                writes: vec![put("c", b"3")],
            },
        );
        assert_eq!(later.unwrap_err().kind, StoreErrorKind::Io);
        assert!(returns(move || drop(store)).is_some(), "the store closes");
    }

    #[test]
    fn a_lone_commit_is_synced_by_two_syncers() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        let batch = PersistBatch {
            writes: vec![put("a", b"1")],
        };
        Store::write(&mut store, &batch).unwrap();
        // The companion may end after the write is answered: wait for it
        // (a hang guard, not a timing assertion).
        let syncs = returns(move || {
            while store.stats().syncs.load(Ordering::Relaxed) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            store.stats().syncs.load(Ordering::Relaxed)
        });
        assert_eq!(syncs, Some(2), "one commit, one sync and its companion");
    }

    /// Lowers SQLite's length limit (1e9 by default) on `store`'s
    /// connection, as if the values written were that much larger.
    fn limit_length(store: &SqliteStore, bytes: i32) {
        store.inspect(move |conn| {
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bytes)
                .unwrap();
        });
    }

    /// Rows in the `chunks` table, and the longest of them.
    fn pieces(store: &SqliteStore) -> (i64, i64) {
        store.inspect(|conn| {
            conn.query_row(
                "SELECT count(*), coalesce(max(length(key) + length(value)), 0) FROM chunks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        })
    }

    #[test]
    fn a_value_longer_than_sqlite_allows_is_stored_across_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        limit_length(&store, 10_000);
        let big: Vec<u8> = (0..45_000u32).map(|i| (i % 251) as u8).collect();
        let checkpoint = |value: &[u8]| Write::Put {
            key: StoreKey::Checkpoint,
            value: value.to_vec(),
        };
        let write = |store: &mut SqliteStore, writes| {
            Store::write(store, &PersistBatch { writes }).unwrap();
        };
        let expect = |value: &[u8]| {
            let mut records = vec![
                (StoreKey::Checkpoint.to_bytes(), value.to_vec()),
                (doc("a").to_bytes(), b"1".to_vec()),
            ];
            records.sort();
            records
        };
        write(&mut store, vec![checkpoint(&big), put("a", b"1")]);
        assert!(Store::read_all(&store).unwrap() == expect(&big));
        let (rows, longest) = pieces(&store);
        assert!(rows >= 4, "{rows} pieces");
        assert!(longest <= 10_000, "a piece of {longest} bytes");
        // A shorter value leaves none of the longer one's pieces behind,
        // also when it still takes several rows.
        write(&mut store, vec![checkpoint(&big[..12_345])]);
        assert!(Store::read_all(&store).unwrap() == expect(&big[..12_345]));
        // Read again at the default limit, after a reopen.
        drop(store);
        let mut store = open(&dir);
        assert!(Store::read_all(&store).unwrap() == expect(&big[..12_345]));
        let version = store.inspect(|conn| {
            conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
                .unwrap()
        });
        assert_eq!(version, CHUNKED_SCHEMA, "older builds must refuse the file");
        // A value that fits one row drops the pieces; so does a delete.
        write(&mut store, vec![checkpoint(b"small")]);
        assert!(Store::read_all(&store).unwrap() == expect(b"small"));
        assert_eq!(pieces(&store).0, 0);
        limit_length(&store, 10_000);
        write(&mut store, vec![checkpoint(&big)]);
        write(
            &mut store,
            vec![Write::Delete {
                key: StoreKey::Checkpoint,
            }],
        );
        assert_eq!(pieces(&store).0, 0);
        // A range delete over the key drops them too.
        write(&mut store, vec![checkpoint(&big)]);
        write(
            &mut store,
            vec![Write::DeleteRange {
                first: StoreKey::Checkpoint,
                last: StoreKey::Checkpoint,
            }],
        );
        assert_eq!(pieces(&store).0, 0, "a range delete leaves no pieces");
        assert_eq!(
            Store::read_all(&store).unwrap(),
            vec![(doc("a").to_bytes(), b"1".to_vec())]
        );
    }

    #[test]
    fn a_checkpoint_longer_than_sqlite_allows_reopens_whole() {
        use sync_core::{Replica, ReplicaConfig, ReplicaId, Timestamp};
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
        let now = Timestamp::from_unix_ms(1_000);
        for i in 0..2_000 {
            let id = format!("doc-{i}");
            replica
                .put(
                    now,
                    "c",
                    &id,
                    [("n", i64::from(i)), ("m", 2 * i64::from(i))],
                )
                .unwrap();
        }
        replica.checkpoint();
        let batch = replica.take_persist().unwrap();
        let stored = batch
            .writes
            .iter()
            .find_map(|w| match w {
                Write::Put {
                    key: StoreKey::Checkpoint,
                    value,
                } => Some(value.len()),
                _ => None,
            })
            .expect("a checkpoint");
        // The checkpoint is 4 times what SQLite takes in one value.
        limit_length(&store, i32::try_from(stored / 4).unwrap());
        Store::write(&mut store, &batch).unwrap();
        assert!(pieces(&store).0 >= 4);
        drop(store);
        let store = open(&dir);
        let records = Store::read_all(&store).unwrap();
        let reopened = Replica::restore(ReplicaConfig::default(), records)
            .unwrap()
            .expect("a stored replica");
        assert_eq!(reopened.records_since_checkpoint(), 0);
        let documents = reopened.list("c");
        assert_eq!(documents.len(), 2_000);
        assert!(documents == replica.list("c"), "the state reopens whole");
    }

    #[test]
    fn writes_after_close_report_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // A receiver whose writer is gone answers "closed".
        let (done, rx) = oneshot::channel::<Result<(), StoreError>>();
        drop(done);
        let err = futures::executor::block_on(answer(rx)).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Closed);
        drop(store);
    }
}
