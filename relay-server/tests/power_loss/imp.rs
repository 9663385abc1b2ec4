//! The power-cut scenario (see `tests/power_loss.rs`): builds the shim,
//! runs the relay under it, kills it, rewinds the data directory from the
//! shim's undo log, restarts, and counts what survived.

use std::cell::Cell;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sync_core::Value;

use test_support::power_cut::{Cut, CutReport, build_shim, cut_power};

use crate::common::{Client, Relay, tempdir};

const LIMIT: Duration = Duration::from_secs(20);
const ROOMS: [&str; 2] = ["a", "b"];
/// Writers `1..=WRITERS`; writer `i` writes into room `ROOMS[i % 2]`.
const WRITERS: u64 = 4;
/// Acknowledged operations before the kill can come (without waiting for a
/// checkpoint)...
const MIN_ACKED: u64 = 200;
/// ... and then it comes within this many milliseconds, at random.
const KILL_DELAY_MS: u64 = 600;
/// Kill without waiting for a checkpoint after this many acknowledged.
const CHECKPOINT_OR_ACKED: u64 = 12_000;
/// Compact often, so snapshots and log truncations are among the writes cut.
const RELAY_ARGS: [&str; 4] = ["--compaction-min-ops", "500", "--keep-recent-ops", "500"];
/// Padding (twice this, 1.2 KB) in every operation, so the WAL fills up and
/// SQLite checkpoints it into the database file during a run (its threshold
/// is 1,000 pages).
const PAD: &str = concat!(
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor ",
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud ",
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure ",
    "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. ",
    "Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt ",
    "mollit anim id est laborum. Sed ut perspiciatis unde omnis iste natus error sit volup."
);

/// When the kill comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// Within KILL_DELAY_MS (at random) after MIN_ACKED acknowledgements.
    Early,
    /// Within KILL_DELAY_MS after SQLite first checkpointed the WAL into the
    /// database file (or after CHECKPOINT_OR_ACKED acknowledgements).
    AfterCheckpoint,
    /// As soon as anything is acknowledged, long before any checkpoint.
    BeforeCheckpoint,
}

/// splitmix64: the test's only randomness, replayable by seed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("POWER_LOSS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(crate::common::now_ms);
        eprintln!("power-loss seed {seed} (POWER_LOSS_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// The document a writer's `n`th operation writes (`n` from 1, like the
/// operation's sequence number): each operation writes one new document,
/// so a reader holds operation `n` of writer `label` exactly when it holds
/// this document.
fn doc_id(label: u64, n: u64) -> String {
    format!("w{label}-{n}")
}

/// One writer: writes until the relay is killed, then waits until its
/// socket dies. Returns how many operations it wrote.
async fn write_until_killed(
    label: u64,
    client: &mut Client,
    acked: &Cell<u64>,
    killed: &Cell<bool>,
    cap: u64,
) -> u64 {
    let mut written = 0u64;
    while !killed.get() {
        if client.pending() < 400 && written < cap {
            for _ in 0..20 {
                written += 1;
                let fields = [
                    ("n", Value::from(written as i64)),
                    ("pad", Value::from(PAD.repeat(2))),
                ];
                let _durable = client
                    .db
                    .collection("docs")
                    .put(&doc_id(label, written), fields);
            }
        }
        // The client syncs on its own thread; this only paces the writes.
        tokio::time::sleep(Duration::from_millis(2)).await;
        acked.set(written - client.pending() as u64);
    }
    // Acknowledgements already on the wire count.
    let _ = client
        .run_until(Duration::from_secs(5), |c| !c.is_live())
        .await;
    acked.set(written - client.pending() as u64);
    if acked.get() == 0 {
        eprintln!(
            "writer {label}: nothing acknowledged of {written}; status {:?}, connects {}, closes {:?}, errors {:?}",
            client.status(),
            client.connects(),
            client.closes(),
            client.errors()
        );
    }
    written
}

/// What one run found.
#[derive(Debug, Default)]
struct Outcome {
    written: u64,
    acked: u64,
    /// Per writer: (label, acknowledged).
    acked_each: Vec<(u64, u64)>,
    acked_lost: u64,
    unacked_kept: u64,
    unacked_lost: u64,
    /// Writers whose surviving operations are not a prefix.
    holes: u64,
    cut: CutReport,
    time: String,
}

/// One run; `unsafe_synchronous` sets the relay's test-only
/// `CONCORD_TEST_UNSAFE_SYNCHRONOUS` (`OFF` or `NORMAL`).
async fn scenario(
    setup: &Setup,
    unsafe_synchronous: Option<&str>,
    kill: KillAt,
    cut: Cut,
    rng: &mut Rng,
) -> Outcome {
    let started = Instant::now();
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    for entry in std::fs::read_dir(&setup.data).expect("template") {
        let path = entry.expect("template entry").path();
        let name = path.file_name().expect("file name").to_string_lossy();
        if !name.ends_with(".log") {
            std::fs::copy(&path, data.join(&*name)).expect("copying the template");
        }
    }
    let (shim, tokens) = (&setup.shim, &setup.tokens);

    let data_path = data.canonicalize().expect("data dir");
    let log = dir.path().join("undo.log");
    let mut env: Vec<(&str, &OsStr)> = vec![
        ("LD_PRELOAD", shim.as_os_str()),
        ("LAZY_FSYNC_DIR", data_path.as_os_str()),
        ("LAZY_FSYNC_LOG", log.as_os_str()),
    ];
    if let Some(mode) = unsafe_synchronous {
        env.push(("CONCORD_TEST_UNSAFE_SYNCHRONOUS", OsStr::new(mode)));
    }
    let mut relay = Relay::start_with_env(&data, "127.0.0.1:0", &RELAY_ARGS, &env);
    let url = relay.url();
    let mut writers: Vec<Client> = (1..=WRITERS)
        .map(|id| {
            let room = (id % 2) as usize;
            Client::new(id, ROOMS[room], &tokens[room], &url)
        })
        .collect();
    // One at a time. When the four connected at once, one to three of them
    // sometimes stalled for the whole run (no Welcome, or a Welcome and a
    // first push never acknowledged), with or without the shim, on a loaded
    // machine; connected one by one they never did. Not what this test is
    // about, and not yet explained.
    for writer in &mut writers {
        writer.start();
        writer
            .run_until(LIMIT, Client::is_live)
            .await
            .expect("writer connects");
    }
    let acked: Vec<Cell<u64>> = (0..WRITERS).map(|_| Cell::new(0)).collect();
    let killed = Cell::new(false);
    // The kill comes at a random time (see KillAt). The start is counted in
    // operations, so a slow machine does not mean a small run; the delay is
    // time, not operations, because acknowledgements arrive in bursts right
    // after each checkpoint (the commit that checkpoints holds the others
    // back), and a kill triggered by a count would land there, just after
    // the WAL was synced, far more often than chance.
    let delay = match kill {
        KillAt::BeforeCheckpoint => Duration::ZERO,
        _ => Duration::from_millis(rng.below(KILL_DELAY_MS)),
    };
    let db = data.join("relay.sqlite3");
    let template_size = std::fs::metadata(&db).map_or(0, |m| m.len());
    let killer = async {
        let deadline = Instant::now() + LIMIT;
        loop {
            let total: u64 = acked.iter().map(Cell::get).sum();
            let checkpointed = std::fs::metadata(&db).map_or(0, |m| m.len()) > template_size;
            let ready = match kill {
                KillAt::AfterCheckpoint => checkpointed || total >= CHECKPOINT_OR_ACKED,
                KillAt::Early => total >= MIN_ACKED,
                // At the first acknowledgement: SQLite checkpoints at 1,000
                // WAL pages, and the first push is a few.
                KillAt::BeforeCheckpoint => total > 0,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes too slow: {:?} acknowledged",
                acked.iter().map(Cell::get).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(delay).await;
        relay.kill9();
        killed.set(true);
    };
    // Before the first checkpoint means few writes: far fewer WAL pages
    // than SQLite's checkpoint threshold (1,000), however late the kill
    // lands on a loaded machine.
    let cap = match kill {
        KillAt::BeforeCheckpoint => 20,
        _ => u64::MAX,
    };
    let writing = futures_util::future::join_all(
        writers
            .iter_mut()
            .zip(&acked)
            .enumerate()
            .map(|(i, (w, a))| write_until_killed(i as u64 + 1, w, a, &killed, cap)),
    );
    let (written, ()) = tokio::join!(writing, killer);

    let killed_at = started.elapsed();
    let report = cut_power(&log, cut, &mut || rng.coin());
    // The shim must have seen the relay's writes (and, unless durability is
    // switched off, its fsyncs): otherwise the cut proves nothing.
    let wal = report
        .files
        .iter()
        .find(|f| f.name.ends_with("relay.sqlite3-wal"))
        .unwrap_or_else(|| panic!("the shim saw no WAL: {report:?}"));
    assert!(wal.writes > 0, "{report:?}");
    assert!(unsafe_synchronous.is_some() || wal.syncs > 0, "{report:?}");

    let relay = relay.restart();
    let mut outcome = Outcome {
        cut: report,
        ..Outcome::default()
    };
    let restarted = started.elapsed();
    for (index, room) in ROOMS.iter().enumerate() {
        let token = relay.token(room, "r", "1h", None);
        let mut reader = Client::new(100 + index as u64, room, &token, &relay.url());
        reader.start();
        reader
            .run_until(LIMIT, |c| c.is_live() && c.status().lag == 0)
            .await
            .unwrap();
        let docs = reader.db.collection("docs");
        for w in 0..writers.len() {
            let label = w as u64 + 1;
            if label % 2 != index as u64 {
                continue;
            }
            let (acked, written) = (acked[w].get(), written[w]);
            let has = |n: u64| docs.get(&doc_id(label, n)).is_some();
            outcome.written += written;
            outcome.acked += acked;
            outcome.acked_each.push((label, acked));
            outcome.acked_lost += (1..=acked).filter(|&n| !has(n)).count() as u64;
            let kept = (acked + 1..=written).filter(|&n| has(n)).count() as u64;
            outcome.unacked_kept += kept;
            outcome.unacked_lost += written - acked - kept;
            // Held operations must be a prefix: nothing after a gap.
            let held: Vec<u64> = (1..=written).filter(|&n| has(n)).collect();
            if held.last().is_some_and(|&last| last != held.len() as u64) {
                outcome.holes += 1;
            }
        }
    }
    outcome.time = format!(
        "killed after {killed_at:.1?}, restarted after {restarted:.1?}, checked after {:.1?}",
        started.elapsed()
    );
    outcome
}

/// The shim, and a data directory with a key and an empty database (made by
/// a relay without the shim, stopped cleanly) that each run copies.
struct Setup {
    _dir: tempfile::TempDir,
    shim: PathBuf,
    data: PathBuf,
    tokens: Vec<String>,
}

fn setup() -> Option<Setup> {
    let dir = tempdir();
    let shim = build_shim(dir.path())?;
    let data = dir.path().join("template");
    let mut relay = Relay::start(&data, &RELAY_ARGS);
    let tokens = ROOMS
        .iter()
        .map(|room| relay.token(room, "rw", "1h", None))
        .collect();
    assert!(relay.signal("TERM").success());
    Some(Setup {
        _dir: dir,
        shim,
        data,
        tokens,
    })
}

pub(crate) async fn real_relay_loses_no_acknowledged_op() {
    let Some(setup) = setup() else {
        return;
    };
    let mut rng = Rng::from_env();
    let started = Instant::now();
    let runs = [
        (KillAt::Early, Cut::DropAll),
        (KillAt::AfterCheckpoint, Cut::DropAll),
        (KillAt::AfterCheckpoint, Cut::RandomPages),
    ];
    for (run, (kill, cut)) in runs.into_iter().enumerate() {
        let outcome = scenario(&setup, None, kill, cut, &mut rng).await;
        eprintln!(
            "real relay, run {run}, kill {kill:?}, cut {cut:?}: {}",
            summary(&outcome)
        );
        assert_eq!(
            outcome.acked_lost, 0,
            "the relay lost acknowledged operations in a power cut: {outcome:?}"
        );
        assert_eq!(
            outcome.holes, 0,
            "a writer's stored ops have a gap: {outcome:?}"
        );
        assert!(outcome.acked >= 100, "{outcome:?}");
    }
    eprintln!("real relay: {} runs in {:?}", runs.len(), started.elapsed());
}

pub(crate) async fn unsynced_relay_loses_acknowledged_ops() {
    let Some(setup) = setup() else {
        return;
    };
    let mut rng = Rng::from_env();
    // synchronous=NORMAL (WAL fsynced only at checkpoints) survives a
    // killed process: a kill -9 test cannot tell it from FULL...
    let outcome = scenario(
        &setup,
        Some("NORMAL"),
        KillAt::AfterCheckpoint,
        Cut::ProcessOnly,
        &mut rng,
    )
    .await;
    eprintln!(
        "relay with synchronous=NORMAL, process killed only: {}",
        summary(&outcome)
    );
    assert_eq!(outcome.acked_lost, 0, "{outcome:?}");
    // ...but a power cut loses what it acknowledged since its last
    // checkpoint. A cut during a checkpoint loses nothing acknowledged (the
    // checkpoint began by syncing the WAL, and the commit running it holds
    // every acknowledgement back), and with the shim's bookkeeping the
    // writer spends much of its time checkpointing: so up to three random
    // cuts after a checkpoint, then one before the first checkpoint, which
    // must lose every acknowledged operation.
    let mut found = None;
    let kills = [
        KillAt::AfterCheckpoint,
        KillAt::AfterCheckpoint,
        KillAt::AfterCheckpoint,
        KillAt::BeforeCheckpoint,
    ];
    for (run, kill) in kills.into_iter().enumerate() {
        let outcome = scenario(&setup, Some("NORMAL"), kill, Cut::DropAll, &mut rng).await;
        eprintln!(
            "relay with synchronous=NORMAL, power cut, run {run}, kill {kill:?}: {}",
            summary(&outcome)
        );
        if outcome.acked_lost > 0 {
            found = Some(kill);
            break;
        }
    }
    assert!(
        found.is_some(),
        "no power cut lost an acknowledged op of a relay that fsyncs only at checkpoints"
    );
    // With synchronous=OFF nothing is ever fsynced.
    let outcome = scenario(&setup, Some("OFF"), KillAt::Early, Cut::DropAll, &mut rng).await;
    eprintln!(
        "relay with synchronous=OFF, power cut: {}",
        summary(&outcome)
    );
    assert!(outcome.acked_lost > 0, "{outcome:?}");
}

/// The shim and the rewind alone, on shell commands (several processes
/// sharing one log): what was fsynced stays, what was written after it is
/// undone, a file never synced is emptied.
pub(crate) fn rewind_keeps_exactly_what_was_synced() {
    let dir = tempdir();
    let Some(shim) = build_shim(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let data = data.canonicalize().expect("data dir");
    let log = dir.path().join("undo.log");
    // `>` truncates, `1<>` overwrites in place, `>>` appends; dd only
    // fsyncs.
    let script = "printf hello > f && dd if=/dev/null of=f conv=notrunc,fsync status=none \
                  && printf XY 1<> f && printf tail >> f && printf new > g";
    let status = Command::new("sh")
        .args(["-c", script])
        .current_dir(&data)
        .env("LD_PRELOAD", &shim)
        .env("LAZY_FSYNC_DIR", &data)
        .env("LAZY_FSYNC_LOG", &log)
        .status()
        .expect("sh");
    assert!(status.success());
    let read = |name: &str| std::fs::read(data.join(name)).expect("file");
    assert_eq!(read("f"), b"XYllotail");
    let report = cut_power(&log, Cut::DropAll, &mut || false);
    assert_eq!(read("f"), b"hello", "{report:?}");
    assert_eq!(read("g"), b"", "{report:?}");
}

fn summary(o: &Outcome) -> String {
    let files: Vec<String> = o
        .cut
        .files
        .iter()
        .map(|f| {
            format!(
                "{} ({} writes, {} fsyncs, {} undone, {} -> {} bytes)",
                f.name.rsplit('/').next().unwrap_or(&f.name),
                f.writes,
                f.syncs,
                f.undone,
                f.size_before,
                f.size_after
            )
        })
        .collect();
    format!(
        "written {}, acknowledged {} (writer, acked: {:?}), acknowledged lost {}, unacknowledged kept {}, \
         unacknowledged lost {}; files: {}; {}",
        o.written,
        o.acked,
        o.acked_each,
        o.acked_lost,
        o.unacked_kept,
        o.unacked_lost,
        files.join(", "),
        o.time
    )
}
