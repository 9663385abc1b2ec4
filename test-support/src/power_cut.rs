//! Power cuts for durability tests, on Linux with glibc: the `lazy_fsync`
//! `LD_PRELOAD` shim (`relay-server/tests/fixtures/lazy_fsync.c`) keeps an
//! undo log of every write to a directory and marks each completed sync;
//! after the process under test is killed, [`cut_power`] rewinds every file
//! to what a power cut could have left of it.
//!
//! The relay's power-loss test and the native client's power-cut test both
//! use it, so the log is read, and a cut made, one way.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The page size [`Cut::RandomPages`] mixes by.
const PAGE: usize = 4096;

/// Compiles the shim into `dir` with the system C compiler (`$CC`, else
/// `cc`); `None`, after saying why, when there is no compiler (the test
/// then skips).
pub fn build_shim(dir: &Path) -> Option<PathBuf> {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay-server/tests/fixtures/lazy_fsync.c");
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

/// How a power cut treats writes made after a file's last sync began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// No power cut: only the process died, every write kept.
    ProcessOnly,
    /// Every unsynced write is lost.
    DropAll,
    /// Each page changed since the last sync holds its synced or its final
    /// contents, at random; the file has its synced or its final size.
    RandomPages,
}

/// What [`cut_power`] did.
#[derive(Debug, Default)]
pub struct CutReport {
    /// One entry per file the shim saw.
    pub files: Vec<FileReport>,
}

/// What [`cut_power`] did to one file.
#[derive(Debug)]
pub struct FileReport {
    /// Its path.
    pub name: String,
    /// Writes (and truncations) logged for it.
    pub writes: usize,
    /// Syncs logged for it.
    pub syncs: usize,
    /// Writes made after its last sync began (undone unless the cut kept them).
    pub undone: usize,
    /// Its size before the cut.
    pub size_before: usize,
    /// Its size after.
    pub size_after: usize,
}

/// One record of the shim's log (layout in the header of `lazy_fsync.c`).
struct Record {
    /// Where it starts in the log.
    at: u64,
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
    let mut at = 0;
    // A record cut short by the kill is one whose write never ran.
    while rest.len() >= 48 {
        let len = usize::try_from(u64_at(rest, 40)).expect("record length");
        if rest.len() < 48 + len {
            break;
        }
        let mut file = [0u8; 4];
        file.copy_from_slice(&rest[4..8]);
        records.push(Record {
            at,
            kind: rest[0],
            file: u32::from_le_bytes(file),
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

/// Rewinds every file the shim logged in `log` to what `cut` leaves of it;
/// `coin` is the randomness of [`Cut::RandomPages`] (a replayable source,
/// so a failure can be run again).
pub fn cut_power(log: &Path, cut: Cut, coin: &mut dyn FnMut() -> bool) -> CutReport {
    let records = parse(&std::fs::read(log).expect("undo log"));
    let mut paths = BTreeMap::new();
    let mut synced: BTreeMap<u32, u64> = BTreeMap::new();
    let mut syncs: BTreeMap<u32, usize> = BTreeMap::new();
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
        // `through` is the log's length when the last sync began.
        let undo: Vec<&&Record> = writes.iter().filter(|r| r.at >= through).collect();
        // A file logged but gone by now (a deleted journal) has nothing to rewind.
        let Ok(last) = std::fs::read(&path) else {
            continue;
        };
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
            Cut::ProcessOnly => last.clone(),
            Cut::DropAll => image,
            Cut::RandomPages => mix_pages(&image, &last, coin),
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
fn mix_pages(synced: &[u8], last: &[u8], coin: &mut dyn FnMut() -> bool) -> Vec<u8> {
    let len = if coin() { synced.len() } else { last.len() };
    let mut out = synced.to_vec();
    out.resize(len, 0);
    for start in (0..len).step_by(PAGE) {
        let end = (start + PAGE).min(len);
        let theirs = last.get(start..end.min(last.len())).unwrap_or(&[]);
        if coin() && !theirs.is_empty() {
            out[start..start + theirs.len()].copy_from_slice(theirs);
        }
    }
    out
}
