//! Power loss, not only process death: every operation the relay
//! acknowledged survives a cut that also loses the OS page cache, and the
//! same cut does lose acknowledged operations when the relay is made to
//! acknowledge writes it has not fsynced (the test-only environment variable
//! `CONCORD_TEST_UNSAFE_SYNCHRONOUS=NORMAL` or `OFF`, read in `src/store.rs`).
//! With `NORMAL` a kill without the power cut loses nothing: that is what
//! `tests/durability.rs` alone cannot see.
//!
//! What it simulates. The relay runs under an `LD_PRELOAD` shim
//! (`tests/fixtures/lazy_fsync.c`, compiled here with the system `cc`) that
//! keeps an undo log of every write to a file in the data directory: before
//! each `write`/`pwrite`/`writev`/`ftruncate`/`fallocate` it records the
//! range's old bytes and the old file size, and after each successful
//! `fsync`/`fdatasync` of a file it records "synced through log position
//! N", N being the log's length *before* that fsync began. The test writes from
//! four clients into two rooms and sends the relay SIGKILL under load, at a
//! random moment after some operations were acknowledged (in two of the
//! three runs, after SQLite's first WAL checkpoint, so that writes to the
//! database file are cut too). The clients then read until their sockets
//! die (an ack already on the wire counts), and the test rewinds each file
//! to a state a power cut could have left:
//!
//! - `drop-all`: every write after the file's last sync is undone, newest
//!   first, and the file is cut back to its size at that sync. This is the
//!   strictest cut: nothing that was not fsynced survives, so an
//!   acknowledged operation whose bytes were not yet synced is lost.
//! - `random-pages`: each 4 KiB page that changed since the last sync holds
//!   either its synced or its final contents, at random, and the file has
//!   either size: the kernel wrote back some dirty pages before the cut.
//!
//! Then the relay restarts without the shim (it must pass its integrity
//! check) and fresh clients read both rooms over real sockets: every
//! acknowledged operation must be there, and each writer's operations must
//! be a gap-free prefix. The test reports how many unacknowledged operations
//! were kept or lost.
//!
//! What it does not simulate: directory entries (a file created or removed
//! after the last directory fsync keeps existing as it is; SQLite fsyncs the
//! directory when it creates the WAL), torn writes inside a 4 KiB page,
//! writes through shared memory maps (SQLite's `-shm` wal-index, which SQLite
//! rebuilds from the WAL when the first connection opens it after a crash),
//! a disk or controller that acknowledges a flush it has not done, and a
//! kernel crash (the relay process dies; the machine does not). The undo log
//! itself lives in the real page cache, which the SIGKILL does not touch.
//!
//! Linux on x86_64 or aarch64 with glibc only; elsewhere, or without a C
//! compiler, the tests print why they skip. `POWER_LOSS_SEED=N` replays a
//! run's random choices (the kill moment still depends on timing).

mod common;

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[path = "power_loss/imp.rs"]
mod imp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_ops_survive_a_power_cut() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    imp::real_relay_loses_no_acknowledged_op().await;
    #[cfg(not(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    eprintln!("skipped: the power-cut shim needs Linux, glibc and x86_64 or aarch64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_power_cut_catches_a_relay_that_acks_unsynced_writes() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    imp::unsynced_relay_loses_acknowledged_ops().await;
    #[cfg(not(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    eprintln!("skipped: the power-cut shim needs Linux, glibc and x86_64 or aarch64");
}

#[test]
fn the_rewind_keeps_exactly_what_was_synced() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    imp::rewind_keeps_exactly_what_was_synced();
    #[cfg(not(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    eprintln!("skipped: the power-cut shim needs Linux, glibc and x86_64 or aarch64");
}
