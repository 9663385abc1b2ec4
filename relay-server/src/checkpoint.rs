//! WAL checkpoints off the commit path: a thread with its own connection
//! folds the SQLite WAL back into the database file, so no commit ever
//! copies pages or syncs the database file.
//!
//! Why: with SQLite's default auto-checkpoint, the commit that takes the WAL
//! past 1,000 pages runs the checkpoint itself (copy every page, fsync the
//! database file) before it returns, a latency spike for every request in
//! that group. The writer connection replaces that hook with one that only
//! reports the WAL's size ([`note_wal_pages`]); the writer thread passes it
//! on ([`Checkpointer::wal_grew`]) and this thread checkpoints.
//!
//! Policy: once [`Policy::passive_pages`] pages have been written since the
//! last checkpoint, a PASSIVE checkpoint copies what it can without taking
//! any lock a commit needs. Under constant writes that never lets SQLite
//! start the WAL over (it restarts only when a writer finds every frame
//! copied), so once the WAL holds [`Policy::restart_pages`] pages a RESTART
//! follows the PASSIVE one: it blocks commits while it copies the few frames
//! written since and syncs, and the next commit writes from the start of
//! the WAL again. The WAL file so stays near `restart_pages` pages. The
//! shutdown TRUNCATE stays with the writer (see `crate::store`).

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use crate::metrics::Metrics;

/// When to checkpoint, in WAL pages (4 KiB each by default).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// Pages written since the last checkpoint that start a PASSIVE one
    /// (SQLite's own auto-checkpoint threshold).
    pub(crate) passive_pages: u32,
    /// WAL size that adds a RESTART after the PASSIVE checkpoint.
    pub(crate) restart_pages: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            passive_pages: 1_000,
            // About 32 MiB: a blocking RESTART every 8 PASSIVE checkpoints
            // under constant writes, and it only copies what they missed.
            restart_pages: 8_000,
        }
    }
}

thread_local! {
    /// The WAL size the last commit on this thread reported, if not yet
    /// taken. A `fn` hook cannot capture state, and SQLite runs the hook on
    /// the committing thread, which for the writer connection is always the
    /// writer thread.
    static WAL_PAGES: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The writer connection's WAL hook: records the WAL's size for
/// [`take_wal_pages`]. Installing it replaces SQLite's auto-checkpoint hook,
/// so `PRAGMA wal_autocheckpoint` then reads 0.
pub(crate) fn note_wal_pages(_wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(u32::try_from(pages).ok());
    Ok(())
}

/// The WAL size reported by this thread's last commit, once.
pub(crate) fn take_wal_pages() -> Option<u32> {
    WAL_PAGES.take()
}

/// What the writer and the checkpoint thread share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// WAL size after the last commit.
    pages: u32,
    /// WAL size when the last checkpoint ran. Frames it could not copy
    /// (a reader still needed them) wait for the next one rather than
    /// retrying at once.
    checked: u32,
    stop: bool,
}

impl State {
    /// Pages written since the last checkpoint. A WAL smaller than it was
    /// then has started over, so all of it is new.
    fn unchecked(&self) -> u32 {
        if self.pages >= self.checked {
            self.pages - self.checked
        } else {
            self.pages
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section stores plain numbers; none can be left half
        // done by a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The checkpoint thread. [`Checkpointer::stop`] ends it; dropping it
/// without stopping leaves the thread to end when its next wait does.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    policy: Policy,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection of its own to the
    /// database (so the writer's connection is never busy checkpointing).
    pub(crate) fn start(
        conn: Connection,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Checkpointer> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("concord-store-checkpoint".into())
                .spawn(move || checkpoint_loop(&conn, &shared, policy, &metrics))?
        };
        Ok(Checkpointer {
            shared,
            policy,
            thread: Some(thread),
        })
    }

    /// Writer, after a commit: the WAL now holds `pages` pages. Wakes the
    /// thread only when a checkpoint is due, so most commits just store a
    /// number.
    pub(crate) fn wal_grew(&self, pages: u32) {
        let mut state = self.shared.lock();
        state.pages = pages;
        let due = state.unchecked() >= self.policy.passive_pages;
        drop(state);
        if due {
            self.shared.wake.notify_one();
        }
    }

    /// Ends the thread after the checkpoint under way, if any.
    pub(crate) fn stop(mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_loop(conn: &Connection, shared: &Shared, policy: Policy, metrics: &Metrics) {
    loop {
        let mut state = shared.lock();
        while !state.stop && state.unchecked() < policy.passive_pages {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.stop {
            return;
        }
        drop(state);
        let mut outcome = checkpoint(conn, "PASSIVE", metrics);
        if let Some(log) = outcome
            && log >= policy.restart_pages
        {
            outcome = checkpoint(conn, "RESTART", metrics);
            metrics.wal_restarts.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = shared.lock();
        state.checked = match outcome {
            Some(log) => log,
            // Failed: the next `passive_pages` pages try again.
            None => state.pages,
        };
    }
}

/// Runs one checkpoint; returns the WAL's size in frames.
fn checkpoint(conn: &Connection, mode: &str, metrics: &Metrics) -> Option<u32> {
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get::<_, i64>(1)
    });
    match result {
        Ok(log) => {
            metrics.wal_checkpoints.fetch_add(1, Ordering::Relaxed);
            // -1 means the database is not in WAL mode (it always is here).
            Some(u32::try_from(log).unwrap_or(0))
        }
        Err(e) => {
            tracing::warn!("WAL checkpoint ({mode}) failed: {e}");
            metrics.error("wal_checkpoint");
            None
        }
    }
}
