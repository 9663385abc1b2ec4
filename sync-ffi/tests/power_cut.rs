//! A put whose call returned survives a power cut, not only a killed
//! process: the SQLite store answers a write only after a sync of the WAL
//! that started after its commit (SQLite itself runs with
//! `synchronous=NORMAL`, see `sqlite.rs`), and this checks that promise.
//!
//! A child process (this test binary again, running `power_cut_child`)
//! opens a database and puts from four threads, printing each put once
//! `wait()` returned. It runs under the relay's `LD_PRELOAD` shim
//! (`relay-server/tests/fixtures/lazy_fsync.c`, compiled here with the
//! system `cc`), which keeps an undo log of every write to the database's
//! directory and marks every completed `fsync`/`fdatasync`. The test kills
//! the child with SIGKILL after a few hundred puts, undoes every write made
//! after each file's last sync began (the strictest cut: nothing unsynced
//! survives), opens the database again and looks for every put the child
//! printed. Answering before the sync (a store that skipped it) loses puts
//! here; a mere kill would not.
//!
//! Linux with glibc on x86_64 or aarch64 only; elsewhere, or without a C
//! compiler, the test prints why it skips.

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use std::collections::BTreeMap;
    use std::ffi::{OsStr, OsString};
    use std::io::{BufRead, BufReader};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use sync_ffi::{Options, Value, Wait};

    /// Set in the child: the database it writes.
    pub(crate) const CHILD_DB: &str = "CONCORD_POWER_CUT_DB";
    const WRITERS: usize = 4;
    /// Puts acknowledged before the kill.
    const KILL_AFTER: usize = 400;

    fn build_shim(dir: &Path) -> Option<PathBuf> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../relay-server/tests/fixtures/lazy_fsync.c");
        let so = dir.join("lazy_fsync.so");
        let cc = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
        let out = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-U_FORTIFY_SOURCE", "-o"])
            .arg(&so)
            .arg(&source)
            .args(["-ldl", "-lpthread"])
            .output();
        match out {
            Err(e) => {
                eprintln!("skipped: cannot run the C compiler {cc:?}: {e}");
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

    /// The child: puts until killed, printing each durable one.
    pub(crate) fn child(db: &Path) {
        let db = sync_ffi::open(db, Options::local()).expect("opens");
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let docs = db.collection("docs");
                    for i in 0.. {
                        let id = format!("w{w}-{i}");
                        docs.put(&id, [("n", Value::from(i))])
                            .wait()
                            .expect("durable");
                        // One write per line: a line is whole or absent.
                        use std::io::Write as _;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "durable {id}");
                        let _ = out.flush();
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    struct Record {
        at: u64,
        kind: u8,
        file: u32,
        seq: u64,
        a: u64,
        c: u64,
        payload: Vec<u8>,
    }

    /// The shim's log (format in the header of `lazy_fsync.c`).
    fn parse(bytes: &[u8]) -> Vec<Record> {
        let u64_at =
            |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let mut records = Vec::new();
        let (mut rest, mut at) = (bytes, 0u64);
        // A record cut short by the kill is one whose write never ran.
        while rest.len() >= 48 {
            let len = usize::try_from(u64_at(rest, 40)).expect("length");
            if rest.len() < 48 + len {
                break;
            }
            records.push(Record {
                at,
                kind: rest[0],
                file: u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")),
                seq: u64_at(rest, 8),
                a: u64_at(rest, 16),
                c: u64_at(rest, 32),
                payload: rest[48..48 + len].to_vec(),
            });
            rest = &rest[48 + len..];
            at += 48 + len as u64;
        }
        records
    }

    /// Undoes, newest first, every write made after its file's last sync
    /// began. Returns how many writes were undone.
    fn cut_power(log: &Path) -> usize {
        let records = parse(&std::fs::read(log).expect("undo log"));
        let mut paths = BTreeMap::new();
        let mut synced: BTreeMap<u32, u64> = BTreeMap::new();
        let mut all_synced = 0;
        for r in &records {
            match r.kind {
                b'F' => {
                    let path = PathBuf::from(OsStr::from_bytes(&r.payload));
                    if let Some(known) = paths.insert(r.file, path.clone()) {
                        assert_eq!(known, path, "two files share an id in the undo log");
                    }
                }
                b'S' => {
                    let through = synced.entry(r.file).or_default();
                    *through = (*through).max(r.seq);
                }
                b'A' => all_synced = all_synced.max(r.seq),
                _ => {}
            }
        }
        let mut undone = 0;
        for (file, path) in paths {
            let through = synced.get(&file).copied().unwrap_or(0).max(all_synced);
            let Ok(last) = std::fs::read(&path) else {
                continue;
            };
            let mut image = last.clone();
            for r in records
                .iter()
                .rev()
                .filter(|r| r.file == file && matches!(r.kind, b'W' | b'T') && r.at >= through)
            {
                let at = usize::try_from(r.a).expect("offset");
                if image.len() < at + r.payload.len() {
                    image.resize(at + r.payload.len(), 0);
                }
                image[at..at + r.payload.len()].copy_from_slice(&r.payload);
                image.resize(usize::try_from(r.c).expect("size"), 0);
                undone += 1;
            }
            if image != last {
                std::fs::write(&path, &image).expect("rewinding a file");
            }
        }
        undone
    }

    pub(crate) fn durable_puts_survive_a_power_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let Some(shim) = build_shim(dir.path()) else {
            return;
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let data = data.canonicalize().expect("canonical");
        let db = data.join("power.db");
        // Created here, without the shim: the child then never makes (and
        // deletes) SQLite's first rollback journal, whose inode number the
        // WAL could reuse under the journal's name in the shim's log.
        futures::executor::block_on(
            sync_ffi::open(&db, Options::local())
                .expect("creates")
                .close(),
        );
        let log = dir.path().join("undo.log");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "power_cut_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &db)
            .env("LD_PRELOAD", &shim)
            .env("LAZY_FSYNC_DIR", &data)
            .env("LAZY_FSYNC_LOG", &log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("child");
        let stdout = child.stdout.take().expect("stdout");
        // Killed a moment after the KILL_AFTERth put, at a varying point
        // of a commit or a sync; every line printed before it died counts.
        let pid = child.id();
        let delay = std::time::Duration::from_micros(u64::from(pid % 3_000));
        let mut durable = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("durable ") {
                durable.push(id.to_owned());
                if durable.len() == KILL_AFTER {
                    std::thread::sleep(delay);
                    child.kill().expect("SIGKILL");
                }
            }
        }
        let _ = child.wait();
        assert!(
            durable.len() >= KILL_AFTER,
            "the child stopped after {} puts",
            durable.len()
        );
        let undone = cut_power(&log);
        let db = sync_ffi::open(&db, Options::local()).expect("reopens after the cut");
        let docs = db.collection("docs");
        let lost: Vec<&String> = durable.iter().filter(|id| docs.get(id).is_none()).collect();
        assert!(
            lost.is_empty(),
            "{} of {} durable puts lost by the power cut ({undone} writes undone), e.g. {:?}",
            lost.len(),
            durable.len(),
            &lost[..lost.len().min(5)]
        );
        eprintln!(
            "{} durable puts all kept; {undone} unsynced writes undone",
            durable.len()
        );
        futures::executor::block_on(db.close());
    }
}

#[test]
fn durable_puts_survive_a_power_cut() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    imp::durable_puts_survive_a_power_cut();
    #[cfg(not(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    eprintln!("skipped: the power-cut shim needs Linux, glibc and x86_64 or aarch64");
}

/// The writer process of `durable_puts_survive_a_power_cut`; does nothing
/// unless that test started it.
#[test]
fn power_cut_child() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    if let Some(db) = std::env::var_os(imp::CHILD_DB) {
        imp::child(std::path::Path::new(&db));
    }
}
