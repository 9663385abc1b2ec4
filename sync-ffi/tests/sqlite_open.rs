//! Opening a `SqliteStore`: exclusive access across threads and processes,
//! corrupt files, and the asynchronous interface.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sync_client::platform::{ClientStore, StoreErrorKind};
use sync_core::persist::{PersistBatch, StoreKey, Write};
use sync_core::store::Store;
use sync_ffi::SqliteStore;

/// Set in the child process the lock tests start.
const CHILD_ENV: &str = "CONCORD_SQLITE_LOCK_CHILD";

/// What the child prints once it holds the database (libtest may print
/// "test lock_child ... " on the same line before it).
const READY: &str = "CONCORD-LOCK-CHILD-READY";

fn batch(id: &str, value: &[u8]) -> PersistBatch {
    PersistBatch {
        writes: vec![Write::Put {
            key: StoreKey::Document {
                collection: "c".into(),
                id: id.into(),
            },
            value: value.to_vec(),
        }],
    }
}

#[test]
fn a_second_open_in_the_same_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let mut first = SqliteStore::open(&path).unwrap();
    Store::write(&mut first, &batch("a", b"1")).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Locked, "{err}");
    assert!(err.message.contains("already open"), "{err}");
    // From another thread too.
    let p = path.clone();
    let err = std::thread::spawn(move || SqliteStore::open(p).unwrap_err())
        .join()
        .unwrap();
    assert_eq!(err.kind, StoreErrorKind::Locked);
    // The holder is unharmed, and after it closes the database opens again.
    Store::write(&mut first, &batch("b", b"2")).unwrap();
    drop(first);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(Store::read_all(&again).unwrap().len(), 2);
}

/// Not a test on its own: the child half of the two-process tests. It opens
/// the database named in `CHILD_ENV`, writes, says READY, and holds the
/// database until its stdin closes.
#[test]
fn lock_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut store = SqliteStore::open(&path).unwrap();
    Store::write(&mut store, &batch("child", b"held")).unwrap();
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Store::write(&mut store, &batch("child-after", b"2")).unwrap();
}

/// Starts this test binary again as `lock_child` on `path`; returns once the
/// child holds the database.
fn spawn_child(path: &Path) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready, said_ready) = std::sync::mpsc::channel();
    // Reads until READY, then keeps draining so the child never blocks on a
    // full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) if line.contains(READY) => {
                    let _ = ready.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    if said_ready.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("the child did not take the database within 60 s");
    }
    child
}

#[test]
fn another_process_is_refused_while_one_holds_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let mut child = spawn_child(&path);
    let started = std::time::Instant::now();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Locked, "{err}");
    // Refused by the lock file, at once, with advice; not by SQLite's
    // busy timeout.
    assert!(err.message.contains("already open"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Let the child write once more and exit cleanly.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let store = SqliteStore::open(&path).unwrap();
    let records = Store::read_all(&store).unwrap();
    assert_eq!(records.len(), 2, "both of the child's writes are there");
}

#[test]
fn a_killed_holder_leaves_the_database_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let mut child = spawn_child(&path);
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Locked, "{err}");
    assert!(err.message.contains("already open"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let records = Store::read_all(&store).unwrap();
    assert_eq!(records.len(), 1, "the write the child was told was durable");
}

#[test]
fn a_garbage_file_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    assert!(err.message.contains("not a database"), "{err}");
    // The lock was released with the failed open: the next try says the same.
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
}

#[test]
fn a_damaged_database_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    {
        let mut store = SqliteStore::open(&path).unwrap();
        for i in 0..200 {
            Store::write(&mut store, &batch(&format!("doc{i}"), &[i as u8; 300])).unwrap();
        }
    }
    // Keep the header (page 1), overwrite the rest with garbage.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192, "the database spans several pages");
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();
    let err = match SqliteStore::open(&path) {
        Err(e) => e,
        Ok(store) => Store::read_all(&store).unwrap_err(),
    };
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
}

#[test]
fn a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path().join("no/such/dir/db")).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Io, "{err}");
}

#[test]
fn client_store_futures_resolve_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    // Many writes queued before any is awaited land in order, together.
    let writes: Vec<_> = (0..100)
        .map(|i| ClientStore::write(&store, batch("same", &[i])))
        .collect();
    futures::executor::block_on(async {
        for w in writes {
            w.await.unwrap();
        }
        let records = ClientStore::read_all(&store).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1, vec![99], "the last write wins");
    });
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(Store::read_all(&store).unwrap()[0].1, vec![99]);
}

/// A copied database file (a copied data directory, a restored backup)
/// continues under a replica id of its own, with everything it held; the
/// original, and a file renamed in place, keep theirs.
#[test]
fn a_copied_database_file_gets_a_replica_id_of_its_own() {
    use sync_ffi::{Options, Wait as _};

    let dir = tempfile::tempdir().unwrap();
    let original_path = dir.path().join("original.db");
    let original_id = {
        let db = sync_ffi::open(&original_path, Options::local()).unwrap();
        db.collection("todos")
            .put("a", [("title", "unsent")])
            .wait()
            .unwrap();
        let id = db.replica_id();
        futures::executor::block_on(db.close());
        id
    };
    let copy_path = dir.path().join("copy.db");
    std::fs::copy(&original_path, &copy_path).unwrap();

    let copy = sync_ffi::open(&copy_path, Options::local()).unwrap();
    let copy_id = copy.replica_id();
    assert_ne!(
        copy_id, original_id,
        "the copy must not write as the original"
    );
    let doc = copy
        .collection("todos")
        .get("a")
        .expect("the copy keeps the data");
    assert_eq!(doc.fields["title"], sync_ffi::Value::from("unsent"));
    assert_eq!(
        copy.status().pending_writes,
        1,
        "the unsent write is still queued"
    );
    futures::executor::block_on(copy.close());
    let copy = sync_ffi::open(&copy_path, Options::local()).unwrap();
    assert_eq!(copy.replica_id(), copy_id, "the new id is stored");
    futures::executor::block_on(copy.close());

    let original = sync_ffi::open(&original_path, Options::local()).unwrap();
    assert_eq!(original.replica_id(), original_id);
    futures::executor::block_on(original.close());
    let renamed_path = dir.path().join("renamed.db");
    std::fs::rename(&original_path, &renamed_path).unwrap();
    let renamed = sync_ffi::open(&renamed_path, Options::local()).unwrap();
    assert_eq!(renamed.replica_id(), original_id, "a rename is not a copy");
    futures::executor::block_on(renamed.close());
}
