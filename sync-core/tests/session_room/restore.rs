//! Restoring a room from what it persisted.

use sync_core::SnapshotError;
use sync_core::Timestamp;
use sync_core::room::{Room, RoomConfig, RoomRestoreError};
use sync_core::session::LinkState;

use crate::harness::{RoomStore, World};

/// A room whose store holds a snapshot through 20 and entries 21..=25,
/// written by client 0 while client 1 listened.
fn compacted_world() -> World {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    w.write_many(a, "first", 20);
    w.compact_now();
    w.write_many(a, "second", 5);
    assert_eq!(w.room_store.snapshot.as_ref().map(|s| s.0), Some(20));
    assert_eq!(
        w.room_store.entries.keys().copied().collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
    w
}

fn restore(store: &RoomStore) -> Result<Room, RoomRestoreError> {
    Room::restore(
        RoomConfig::default(),
        store.snapshot.clone(),
        store.entry_list(),
    )
}

#[test]
fn room_restores_head_and_accepted_from_snapshot_and_entries() {
    let w = compacted_world();
    let restored = restore(&w.room_store).expect("restores");
    assert_eq!(restored.head(), 25);
    assert_eq!(restored.accepted(), w.room.accepted());
    assert_eq!(
        restored
            .stats(Timestamp::from_unix_ms(w.now))
            .compacted_through,
        20
    );
}

#[test]
fn room_restores_from_entries_alone_in_any_order() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.write_many(a, "doc", 12);
    let mut entries = w.room_store.entry_list();
    entries.reverse();
    let restored = Room::restore(RoomConfig::default(), None, entries).expect("restores");
    assert_eq!(restored.head(), 12);
    assert_eq!(restored.accepted(), w.room.accepted());
}

#[test]
fn restored_room_serves_returning_and_new_clients() {
    let mut w = compacted_world();
    w.restart_room();
    assert_eq!(w.room.head(), 25);
    w.advance(60_000);
    assert_eq!(w.c(0).link(), LinkState::Live);
    assert_eq!(w.c(1).link(), LinkState::Live);
    // Client 1 resumed from its cursor: nothing to send.
    assert_eq!(w.c(1).hellos().last().map(|h| h.cursor), Some(25));
    let late = w.add_client(3);
    w.start(late);
    w.write_many(1, "after-restart", 3);
    assert_eq!(w.room.head(), 28);
    w.assert_converged();
}

#[test]
fn gap_in_the_log_is_reported() {
    let w = compacted_world();
    let mut store = w.room_store.clone();
    store.entries.remove(&23);
    assert_eq!(
        restore(&store).err(),
        Some(RoomRestoreError::Gap {
            after: 22,
            next: 24
        })
    );

    let mut store = w.room_store.clone();
    store.entries.remove(&21);
    assert_eq!(
        restore(&store).err(),
        Some(RoomRestoreError::Gap {
            after: 20,
            next: 22
        })
    );

    let mut store = w.room_store.clone();
    store.snapshot = None;
    assert_eq!(
        restore(&store).err(),
        Some(RoomRestoreError::Gap { after: 0, next: 21 })
    );
}

#[test]
fn entries_the_snapshot_covers_are_skipped() {
    let w = compacted_world();
    let mut store = w.room_store.clone();
    // A crash between writing the snapshot and truncating the log leaves these.
    let stale = store.entries[&21].clone();
    store.entries.insert(5, stale.clone());
    store.entries.insert(20, stale);
    let restored = restore(&store).expect("restores");
    assert_eq!(restored.head(), 25);
    assert_eq!(restored.accepted(), w.room.accepted());
}

#[test]
fn corrupt_snapshot_is_an_error_not_a_panic() {
    let w = compacted_world();
    let (through, bytes) = w.room_store.snapshot.clone().expect("snapshot");
    let with = |bytes: Vec<u8>| {
        let mut store = w.room_store.clone();
        store.snapshot = Some((through, bytes));
        restore(&store).err()
    };

    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    assert!(matches!(
        with(flipped),
        Some(RoomRestoreError::Snapshot(
            SnapshotError::ChecksumMismatch { .. }
        ))
    ));
    assert!(matches!(
        with(bytes[..bytes.len() / 2].to_vec()),
        Some(RoomRestoreError::Snapshot(SnapshotError::Truncated { .. }))
    ));
    assert!(matches!(
        with(b"definitely not a snapshot".to_vec()),
        Some(RoomRestoreError::Snapshot(SnapshotError::BadMagic))
    ));
    assert!(matches!(
        with(Vec::new()),
        Some(RoomRestoreError::Snapshot(_))
    ));
    // Every truncation and every single-byte corruption fails cleanly.
    for len in 0..bytes.len() {
        assert!(with(bytes[..len].to_vec()).is_some(), "truncated to {len}");
    }
    for at in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[at] = corrupt[at].wrapping_add(1);
        assert!(with(corrupt).is_some(), "byte {at} changed");
    }
}

#[test]
fn corrupt_log_entry_is_an_error_not_a_panic() {
    let w = compacted_world();
    for bad in [Vec::new(), vec![0xff; 9], b"garbage".to_vec()] {
        let mut store = w.room_store.clone();
        store.entries.insert(23, bad);
        assert!(matches!(
            restore(&store),
            Err(RoomRestoreError::Entry { offset: 23, .. })
        ));
    }
    let mut store = w.room_store.clone();
    let mut trailing = store.entries[&22].clone();
    trailing.push(0);
    store.entries.insert(22, trailing);
    assert!(matches!(
        restore(&store),
        Err(RoomRestoreError::Entry { offset: 22, .. })
    ));
}
