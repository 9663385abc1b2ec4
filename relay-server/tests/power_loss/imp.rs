//! The power-cut scenario (see `tests/power_loss.rs`): builds the shim,
//! runs the relay under it, kills it, rewinds the data directory from the
//! shim's undo log, restarts, and counts what survived.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sync_core::{ReplicaId, Value};

use crate::common::{Client, Relay, now_ms, tempdir};

const LIMIT: Duration = Duration::from_secs(20);
const ROOMS: [&str; 2] = ["a", "b"];
/// Writers `1..=WRITERS`; writer `i` writes into room `ROOMS[i % 2]`.
const WRITERS: u64 = 4;
/// Each writer has at least this many operations acknowledged before the
/// kill can come.
const MIN_ACKED: u64 = 100;
/// Compact often, so snapshots and log truncations are among the writes cut.
const RELAY_ARGS: [&str; 4] = ["--compaction-min-ops", "200", "--keep-recent-ops", "100"];
const PAGE: usize = 4096;
/// Padding in every operation, so the WAL fills up and SQLite checkpoints
/// it into the database file during a run (its threshold is 1,000 pages).
const PAD: &str = concat!(
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor ",
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud ",
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure ",
    "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. ",
    "Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt ",
    "mollit anim id est laborum. Sed ut perspiciatis unde omnis iste natus error sit volup."
);

/// How a power cut treats writes after a file's last fsync.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Every unsynced write is lost.
    DropAll,
    /// Each page changed since the last sync holds its synced or its final
    /// contents, at random; the file has its synced or its final size.
    RandomPages,
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

/// Compiles the shim into `dir`; `None` (the test skips) without a C
/// compiler.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lazy_fsync.c");
    let so = dir.join("lazy_fsync.so");
    let cc = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let output = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O1",
            "-U_FORTIFY_SOURCE",
            "-Wall",
            "-o",
        ])
        .arg(&so)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .output();
    match output {
        Err(e) => {
            eprintln!("skipped: cannot run the C compiler {cc:?} to build the shim: {e}");
            None
        }
        Ok(out) => {
            assert!(
                out.status.success(),
                "the shim did not compile:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(so)
        }
    }
}

/// Highest sequence number of the client's own operations the relay has
/// acknowledged: everything below the first operation still in its outbox.
fn acked_through(client: &Client) -> u64 {
    let replica = client.session.replica();
    replica
        .outbox()
        .next()
        .map_or(replica.next_seq() - 1, |op| op.id.seq - 1)
}

/// One writer: writes until the relay is killed, then reads until its
/// socket dies. Returns how many operations it wrote.
async fn write_until_killed(client: &mut Client, acked: &Cell<u64>, killed: &Cell<bool>) -> u64 {
    let id = client.session.replica().id().0;
    let mut written = 0u64;
    while !killed.get() {
        if client.pending() < 400 {
            for _ in 0..20 {
                let fields = [
                    ("n", Value::from(written as i64)),
                    ("pad", Value::from(PAD)),
                ];
                client
                    .session
                    .put(now_ms(), "docs", &format!("w{id}-{written}"), fields)
                    .expect("put");
                written += 1;
            }
        }
        client.step(Duration::from_millis(2)).await;
        acked.set(acked_through(client));
    }
    // Acknowledgements already on the wire count.
    let _ = client
        .run_until(Duration::from_secs(5), |c| !c.is_live())
        .await;
    acked.set(acked_through(client));
    written
}

/// What one run found.
#[derive(Debug, Default)]
struct Outcome {
    written: u64,
    acked: u64,
    acked_lost: u64,
    unacked_kept: u64,
    unacked_lost: u64,
    /// Writers whose surviving operations are not a prefix.
    holes: u64,
    cut: CutReport,
}

async fn scenario(shim: &Path, unsafe_sync_off: bool, cut: Cut, rng: &mut Rng) -> Outcome {
    let dir = tempdir();
    let data = dir.path().join("data");
    // The key and an empty database come from a relay without the shim.
    let mut relay = Relay::start(&data, &RELAY_ARGS);
    let tokens: Vec<String> = ROOMS
        .iter()
        .map(|room| relay.token(room, "rw", "1h", None))
        .collect();
    assert!(relay.signal("TERM").success());

    let data_path = data.canonicalize().expect("data dir");
    let log = dir.path().join("undo.log");
    let mut env: Vec<(&str, &OsStr)> = vec![
        ("LD_PRELOAD", shim.as_os_str()),
        ("LAZY_FSYNC_DIR", data_path.as_os_str()),
        ("LAZY_FSYNC_LOG", log.as_os_str()),
    ];
    if unsafe_sync_off {
        env.push(("CONCORD_TEST_UNSAFE_SYNCHRONOUS_OFF", OsStr::new("1")));
    }
    let mut relay = Relay::start_with_env(&data, "127.0.0.1:0", &RELAY_ARGS, &env);
    let url = relay.url();
    let mut writers: Vec<Client> = (1..=WRITERS)
        .map(|id| {
            let room = (id % 2) as usize;
            Client::new(id, ROOMS[room], &tokens[room], &url)
        })
        .collect();
    for writer in &mut writers {
        writer.start();
    }
    let acked: Vec<Cell<u64>> = (0..WRITERS).map(|_| Cell::new(0)).collect();
    let killed = Cell::new(false);
    let extra = Duration::from_millis(rng.below(400));
    let killer = async {
        let deadline = Instant::now() + LIMIT;
        while acked.iter().map(Cell::get).min().unwrap_or(0) < MIN_ACKED {
            assert!(Instant::now() < deadline, "writes too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(extra).await;
        relay.kill9();
        killed.set(true);
    };
    let writing = futures_util::future::join_all(
        writers
            .iter_mut()
            .zip(&acked)
            .map(|(w, a)| write_until_killed(w, a, &killed)),
    );
    let (written, ()) = tokio::join!(writing, killer);

    let report = cut_power(&log, cut, rng);
    // The shim must have seen the relay's writes (and, unless durability is
    // switched off, its fsyncs): otherwise the cut proves nothing.
    let wal = report
        .files
        .iter()
        .find(|f| f.name.ends_with("relay.sqlite3-wal"))
        .unwrap_or_else(|| panic!("the shim saw no WAL: {report:?}"));
    assert!(wal.writes > 0, "{report:?}");
    assert!(unsafe_sync_off || wal.syncs > 0, "{report:?}");

    let relay = relay.restart();
    let mut outcome = Outcome {
        cut: report,
        ..Outcome::default()
    };
    for (index, room) in ROOMS.iter().enumerate() {
        let token = relay.token(room, "r", "1h", None);
        let mut reader = Client::new(100 + index as u64, room, &token, &relay.url());
        reader.start();
        reader
            .run_until(LIMIT, |c| c.is_live() && c.session.status().lag() == 0)
            .await
            .unwrap();
        let version = reader.session.replica().version();
        for (w, writer) in writers.iter().enumerate() {
            let id = writer.session.replica().id();
            if id.0 % 2 != index as u64 {
                continue;
            }
            let held = version.get(ReplicaId(id.0));
            let has = |seq: u64| held.is_some_and(|h| h.contains(seq));
            let (acked, written) = (acked[w].get(), written[w]);
            outcome.written += written;
            outcome.acked += acked;
            outcome.acked_lost += (1..=acked).filter(|&s| !has(s)).count() as u64;
            let kept = (acked + 1..=written).filter(|&s| has(s)).count() as u64;
            outcome.unacked_kept += kept;
            outcome.unacked_lost += written - acked - kept;
            if held.is_some_and(|h| h.contiguous() != h.highest()) {
                outcome.holes += 1;
            }
        }
    }
    outcome
}

pub(crate) async fn real_relay_loses_no_acknowledged_op() {
    let dir = tempdir();
    let Some(shim) = build_shim(dir.path()) else {
        return;
    };
    let mut rng = Rng::from_env();
    let started = Instant::now();
    for (run, cut) in [
        Cut::DropAll,
        Cut::RandomPages,
        Cut::DropAll,
        Cut::RandomPages,
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = scenario(&shim, false, cut, &mut rng).await;
        eprintln!("real relay, run {run}, {cut:?}: {}", summary(&outcome));
        assert_eq!(
            outcome.acked_lost, 0,
            "the relay lost acknowledged operations in a power cut: {outcome:?}"
        );
        assert_eq!(
            outcome.holes, 0,
            "a writer's stored ops have a gap: {outcome:?}"
        );
        assert!(outcome.acked >= WRITERS * MIN_ACKED, "{outcome:?}");
    }
    eprintln!("real relay: 4 runs in {:?}", started.elapsed());
}

pub(crate) async fn unsynced_relay_loses_acknowledged_ops() {
    let dir = tempdir();
    let Some(shim) = build_shim(dir.path()) else {
        return;
    };
    let mut rng = Rng::from_env();
    let mut found = 0;
    for run in 0..3 {
        let outcome = scenario(&shim, true, Cut::DropAll, &mut rng).await;
        eprintln!(
            "relay with synchronous=OFF, run {run}: {}",
            summary(&outcome)
        );
        if outcome.acked_lost > 0 {
            found += 1;
            break;
        }
    }
    assert!(
        found > 0,
        "the power cut never lost an acknowledged op of a relay that does not fsync"
    );
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
        "written {}, acknowledged {}, acknowledged lost {}, unacknowledged kept {}, \
         unacknowledged lost {}; files: {}",
        o.written,
        o.acked,
        o.acked_lost,
        o.unacked_kept,
        o.unacked_lost,
        files.join(", ")
    )
}

// ---- the undo log ----

/// One record of the shim's log (layout in `tests/fixtures/lazy_fsync.c`).
struct Record {
    kind: u8,
    file: u32,
    seq: u64,
    a: u64,
    c: u64,
    payload: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Vec<Record> {
    let u64_at = |b: &[u8], at: usize| {
        let mut le = [0u8; 8];
        le.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(le)
    };
    let mut records = Vec::new();
    let mut rest = bytes;
    // A record cut short by the kill is one whose write never ran.
    while rest.len() >= 48 {
        let len = usize::try_from(u64_at(rest, 40)).expect("record length");
        if rest.len() < 48 + len {
            break;
        }
        let mut file = [0u8; 4];
        file.copy_from_slice(&rest[4..8]);
        records.push(Record {
            kind: rest[0],
            file: u32::from_le_bytes(file),
            seq: u64_at(rest, 8),
            a: u64_at(rest, 16),
            c: u64_at(rest, 32),
            payload: rest[48..48 + len].to_vec(),
        });
        rest = &rest[48 + len..];
    }
    records
}

#[derive(Debug, Default)]
struct CutReport {
    files: Vec<FileReport>,
}

#[derive(Debug)]
struct FileReport {
    name: String,
    writes: usize,
    syncs: usize,
    undone: usize,
    size_before: usize,
    size_after: usize,
}

/// Rewinds every file the shim saw to what a power cut could leave.
fn cut_power(log: &Path, cut: Cut, rng: &mut Rng) -> CutReport {
    let records = parse(&std::fs::read(log).expect("undo log"));
    let mut paths = BTreeMap::new();
    let mut synced: BTreeMap<u32, u64> = BTreeMap::new();
    let mut syncs: BTreeMap<u32, usize> = BTreeMap::new();
    let mut all_synced = 0;
    for r in &records {
        match r.kind {
            b'F' => {
                paths.insert(r.file, PathBuf::from(OsStr::from_bytes(&r.payload)));
            }
            b'S' => {
                let through = synced.entry(r.file).or_default();
                *through = (*through).max(r.seq);
                *syncs.entry(r.file).or_default() += 1;
            }
            b'A' => all_synced = r.seq.max(all_synced),
            b'W' | b'T' => {}
            other => panic!("unknown undo record {other}"),
        }
    }
    let mut report = CutReport::default();
    for (file, path) in paths {
        let through = synced.get(&file).copied().unwrap_or(0).max(all_synced);
        let writes: Vec<&Record> = records
            .iter()
            .filter(|r| r.file == file && matches!(r.kind, b'W' | b'T'))
            .collect();
        let undo: Vec<&&Record> = writes.iter().filter(|r| r.seq > through).collect();
        let last = std::fs::read(&path).expect("a file the relay wrote");
        let mut image = last.clone();
        for r in undo.iter().rev() {
            // Both kinds carry the old bytes from offset `a`, then the old size.
            let at = usize::try_from(r.a).expect("offset");
            if image.len() < at + r.payload.len() {
                image.resize(at + r.payload.len(), 0);
            }
            image[at..at + r.payload.len()].copy_from_slice(&r.payload);
            image.resize(usize::try_from(r.c).expect("size"), 0);
        }
        let after = match cut {
            Cut::DropAll => image,
            Cut::RandomPages => mix_pages(&image, &last, rng),
        };
        if after != last {
            std::fs::write(&path, &after).expect("rewinding a file");
        }
        report.files.push(FileReport {
            name: path.display().to_string(),
            writes: writes.len(),
            syncs: syncs.get(&file).copied().unwrap_or(0),
            undone: undo.len(),
            size_before: last.len(),
            size_after: after.len(),
        });
    }
    report
}

/// `synced` with each page that differs in `last` taken from `last` or not,
/// at random; the size is one of the two.
fn mix_pages(synced: &[u8], last: &[u8], rng: &mut Rng) -> Vec<u8> {
    let len = if rng.coin() { synced.len() } else { last.len() };
    let mut out = synced.to_vec();
    out.resize(len, 0);
    for start in (0..len).step_by(PAGE) {
        let end = (start + PAGE).min(len);
        let theirs = last.get(start..end.min(last.len())).unwrap_or(&[]);
        if rng.coin() && !theirs.is_empty() {
            out[start..start + theirs.len()].copy_from_slice(theirs);
        }
    }
    out
}
