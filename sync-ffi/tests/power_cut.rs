//! A put whose call returned survives a power cut, not only a killed
//! process: the SQLite store answers a write only after a sync of the WAL
//! that started after its commit (SQLite itself runs with
//! `synchronous=NORMAL`, see `sqlite.rs`), and this checks that promise.
//!
//! A child process (this test binary again, running `power_cut_child`)
//! opens a database and puts from four threads, printing each put once
//! `wait()` returned. It runs under the relay's `LD_PRELOAD` shim
//! (`relay-server/tests/fixtures/lazy_fsync.c`, compiled with the system
//! `cc` by `test_support::power_cut`, which also replays it), which keeps an undo log of every write to the database's
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
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use sync_ffi::{Options, Value, Wait};
    use test_support::power_cut::{Cut, build_shim, cut_power};

    /// Set in the child: the database it writes.
    pub(crate) const CHILD_DB: &str = "CONCORD_POWER_CUT_DB";
    const WRITERS: usize = 4;
    /// Puts acknowledged before the kill.
    const KILL_AFTER: usize = 400;

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
        let undone: usize = cut_power(&log, Cut::DropAll, &mut || false)
            .files
            .iter()
            .map(|f| f.undone)
            .sum();
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
