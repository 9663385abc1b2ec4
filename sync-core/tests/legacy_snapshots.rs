//! The `legacy-snapshots` feature: with it (the default) a build reads
//! snapshot formats 1 to 5 and a session lists all five in its `Hello`;
//! without it (the browser package) only formats 4 and 5, and a snapshot
//! in an older format, on the wire or in a stored checkpoint, is refused
//! with a typed error that names the format, never read as something else.
//!
//! Run both ways: `cargo test -p sync-core --test legacy_snapshots` and
//! the same with `--no-default-features`. The expected formats are
//! literals here, not the crate's constants.

use std::path::PathBuf;

use sync_core::session::SessionConfig;
use sync_core::store::{MemoryStore, Record, Store};
use sync_core::{Replica, ReplicaConfig, ReplicaId, Snapshot, SnapshotError, StoreKey, Timestamp};

const LEGACY: bool = cfg!(feature = "legacy-snapshots");

/// The bytes of a vector file under `tests/vectors` (hex, `#` comments).
fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("vector file");
    let digits: Vec<u8> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The same state in formats 1, 2 and 3 (row-wise) and 4 and 5 (columns).
const LEGACY_VECTORS: [(&str, u8); 3] = [
    ("snapshot-v1.hex", 1),
    ("snapshot.hex", 2),
    ("snapshot-compressed.hex", 3),
];

#[test]
fn a_session_lists_the_formats_this_build_reads() {
    let listed = SessionConfig::new("room", b"token".to_vec()).snapshot_formats;
    let expected: Vec<u8> = if LEGACY {
        vec![1, 2, 3, 4, 5]
    } else {
        vec![4, 5]
    };
    assert_eq!(listed, expected);
}

#[test]
fn formats_1_to_3_are_read_only_with_the_feature() {
    let newer = Snapshot::decode(&vector("snapshot-timeline.hex")).expect("format 5");
    assert_eq!(
        Snapshot::decode(&vector("snapshot-columnar.hex")).expect("format 4"),
        newer
    );
    for (name, format) in LEGACY_VECTORS {
        let decoded = Snapshot::decode(&vector(name));
        if LEGACY {
            assert_eq!(decoded.expect(name), newer, "{name}");
            continue;
        }
        let error = decoded.expect_err(name);
        assert_eq!(error, SnapshotError::UnsupportedVersion(format), "{name}");
        let message = error.to_string();
        assert!(
            message.contains(&format!("version {format} is not supported"))
                && message.contains("4 to 5"),
            "{message}"
        );
    }
}

/// A browser database written by an older build may hold a checkpoint in
/// format 1 to 3 (a relay's snapshot, stored as received). Opening it
/// without the feature is a typed error naming the checkpoint and the
/// format; with the feature it opens to the snapshot's state.
#[test]
fn a_checkpoint_in_an_old_format_opens_only_with_the_feature() {
    let at = Timestamp::from_unix_ms(1_700_000_000_000);
    let mut r = Replica::new(ReplicaId(7), ReplicaConfig::default());
    r.put(at, "a", "x", [("v", 1)]).unwrap();
    r.checkpoint();
    let mut store = MemoryStore::new();
    store.write(&r.take_persist().unwrap()).unwrap();
    let key = StoreKey::Checkpoint.to_bytes();
    let expected = Snapshot::decode(&vector("snapshot-timeline.hex")).unwrap();
    for (name, format) in LEGACY_VECTORS {
        let records: Vec<Record> = store
            .read_all()
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                if k != key {
                    return (k, v);
                }
                // The record's version byte, then the relay's bytes.
                let mut old = v[..1].to_vec();
                old.extend(vector(name));
                (k, old)
            })
            .collect();
        let opened = Replica::restore(ReplicaConfig::default(), records);
        if LEGACY {
            let replica = opened.expect(name).expect("a replica");
            assert_eq!(replica.state(), &expected.state, "{name}");
            continue;
        }
        let message = opened.expect_err(name).to_string();
        assert!(
            message.contains("checkpoint")
                && message.contains(&format!("version {format} is not supported")),
            "{message}"
        );
    }
}
