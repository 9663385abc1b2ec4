//! The checks every storage backend passes, run against SQLite in a temp
//! dir and against a real PostgreSQL (Debian's server, started by
//! `tests/common/postgres.rs`), plus the lease checks only shared storage
//! needs.

use std::sync::Arc;
use std::time::Duration;

use sync_core::room::RoomPersist;

use crate::metrics::Metrics;
use crate::pg_store::PgStore;
use crate::storage::{Backend, Claim, Fence, Storage};
use crate::store::Store;

#[path = "../tests/common/postgres.rs"]
mod postgres_server;
use postgres_server::Postgres;

fn persist(append: &[(u64, &[u8])]) -> RoomPersist {
    RoomPersist {
        append: append.iter().map(|(o, b)| (*o, (*b).into())).collect(),
        ..RoomPersist::default()
    }
}

/// Where a backend keeps its data between opens.
enum Fixture {
    Sqlite(tempfile::TempDir),
    Pg(Postgres),
}

impl Fixture {
    async fn open(&self, name: &str, ttl: Duration) -> Storage {
        let metrics = Arc::new(Metrics::default());
        match self {
            Fixture::Sqlite(dir) => Storage::Sqlite(Store::open(dir.path(), metrics).unwrap()),
            Fixture::Pg(pg) => Storage::Postgres(
                PgStore::open(&pg.url(), format!("ws://{name}/v1/sync"), ttl, metrics)
                    .await
                    .unwrap(),
            ),
        }
    }
}

async fn owned(store: &Storage, room: &str) -> Fence {
    match store.claim(room.into()).await.unwrap() {
        Claim::Owned(fence) => fence,
        other => panic!("claim of {room} not granted: {other:?}"),
    }
}

async fn durable(
    store: &Storage,
    room: &str,
    fence: Fence,
    batch: RoomPersist,
) -> Result<(), String> {
    store
        .submit(room.into(), fence, vec![batch], None)
        .durable
        .await
        .unwrap()
}

/// Appends, snapshot and truncation survive a reopen; a duplicate offset
/// fails its own request only; other rooms are untouched.
async fn writes_survive_reopen_and_truncate(fixture: &Fixture) {
    let store = fixture.open("a", Duration::from_secs(30)).await;
    let room: Arc<str> = "r".into();
    let fence = owned(&store, "r").await;
    let other = owned(&store, "s").await;
    let a = store
        .submit(
            room.clone(),
            fence,
            vec![persist(&[(1, b"a"), (2, b"b")])],
            None,
        )
        .durable;
    let b = store
        .submit(room.clone(), fence, vec![persist(&[(3, b"c")])], None)
        .durable;
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let compact = RoomPersist {
        snapshot: Some((2, b"snap".to_vec().into())),
        truncate_through: Some(2),
        ..RoomPersist::default()
    };
    durable(&store, "r", fence, compact).await.unwrap();
    let dup = store
        .submit(room.clone(), fence, vec![persist(&[(3, b"x")])], None)
        .durable;
    let fine = store
        .submit("s".into(), other, vec![persist(&[(1, b"z")])], None)
        .durable;
    assert!(dup.await.unwrap().is_err(), "offset 3 was written twice");
    fine.await.unwrap().unwrap();
    store.close().await;
    let store = fixture.open("a", Duration::from_secs(30)).await;
    let (snapshot, entries) = store.load(room).await.unwrap();
    assert_eq!(snapshot, Some((2, b"snap".to_vec())));
    assert_eq!(entries, vec![(3, b"c".to_vec())]);
    let (_, entries) = store.load("s".into()).await.unwrap();
    assert_eq!(entries, vec![(1, b"z".to_vec())]);
    store.close().await;
}

/// Many rooms' requests queued at once (one group commit) all land, each
/// in its own room, in order.
async fn concurrent_rooms_all_land(fixture: &Fixture) {
    let store = fixture.open("a", Duration::from_secs(30)).await;
    let mut fences = Vec::new();
    for i in 0..40 {
        fences.push(owned(&store, &format!("g{i}")).await);
    }
    let mut pending = Vec::new();
    for round in 1..=3u64 {
        for (i, fence) in fences.iter().enumerate() {
            let op = format!("{i}-{round}").into_bytes();
            pending.push(
                store
                    .submit(
                        format!("g{i}").into(),
                        *fence,
                        vec![persist(&[(round, &op)])],
                        None,
                    )
                    .durable,
            );
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    for i in 0..40 {
        let (_, entries) = store.load(format!("g{i}").into()).await.unwrap();
        let want: Vec<(u64, Vec<u8>)> = (1..=3)
            .map(|r| (r, format!("{i}-{r}").into_bytes()))
            .collect();
        assert_eq!(entries, want);
    }
    store.close().await;
}

async fn shared_suite(fixture: &Fixture) {
    writes_survive_reopen_and_truncate(fixture).await;
    concurrent_rooms_all_land(fixture).await;
}

#[tokio::test]
async fn sqlite_passes_the_shared_suite() {
    shared_suite(&Fixture::Sqlite(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_shared_suite_and_the_lease_checks() {
    let fixture = Fixture::Pg(Postgres::start());
    shared_suite(&fixture).await;
    one_owner_at_a_time(&fixture).await;
    a_stale_owner_is_fenced(&fixture).await;
    a_restart_at_the_same_address_takes_over_at_once(&fixture).await;
    writer_survives_a_postgres_restart(&fixture).await;
}

/// A live lease keeps the room with its owner; others learn its address;
/// released, it can be claimed at once, with a higher fence.
async fn one_owner_at_a_time(fixture: &Fixture) {
    let a = fixture.open("a", Duration::from_secs(30)).await;
    let b = fixture.open("b", Duration::from_secs(30)).await;
    let fa = owned(&a, "one").await;
    assert_eq!(
        b.claim("one".into()).await.unwrap(),
        Claim::Elsewhere {
            address: "ws://a/v1/sync".into()
        }
    );
    assert!(a.renew("one".into(), fa).await.unwrap());
    a.release("one".into(), fa).await;
    let fb = owned(&b, "one").await;
    assert!(fb > fa, "fences must grow: {fa:?} then {fb:?}");
    assert!(!a.renew("one".into(), fa).await.unwrap());
    a.close().await;
    b.close().await;
}

/// An owner whose lease expired and was claimed by another instance can
/// no longer write anything: not log entries, not a snapshot (so two
/// instances can never install compactions of one room).
async fn a_stale_owner_is_fenced(fixture: &Fixture) {
    let ttl = Duration::from_millis(300);
    let a = fixture.open("a", ttl).await;
    let b = fixture.open("b", ttl).await;
    let fa = owned(&a, "fenced").await;
    durable(&a, "fenced", fa, persist(&[(1, b"one")]))
        .await
        .unwrap();
    // `a` "pauses" past its lease without renewing; `b` takes over.
    let fb = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Claim::Owned(fb) = b.claim("fenced".into()).await.unwrap() {
            break fb;
        }
    };
    let err = durable(&a, "fenced", fa, persist(&[(2, b"stale")]))
        .await
        .unwrap_err();
    assert!(err.contains("fenced"), "{err}");
    let compact = RoomPersist {
        snapshot: Some((1, b"stale snapshot".to_vec().into())),
        truncate_through: Some(1),
        ..RoomPersist::default()
    };
    assert!(durable(&a, "fenced", fa, compact).await.is_err());
    assert!(!a.renew("fenced".into(), fa).await.unwrap());
    durable(&b, "fenced", fb, persist(&[(2, b"two")]))
        .await
        .unwrap();
    let (snapshot, entries) = b.load("fenced".into()).await.unwrap();
    assert_eq!(snapshot, None);
    assert_eq!(entries, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    a.close().await;
    b.close().await;
}

/// An instance started again at its old address (the old process died)
/// gets that process's rooms at once, not after the lease expires, and the
/// old process, were it alive, is fenced.
async fn a_restart_at_the_same_address_takes_over_at_once(fixture: &Fixture) {
    let before = fixture.open("same", Duration::from_secs(60)).await;
    let old = owned(&before, "moved").await;
    let after = fixture.open("same", Duration::from_secs(60)).await;
    let new = owned(&after, "moved").await;
    assert!(new > old);
    assert!(
        durable(&before, "moved", old, persist(&[(1, b"old")]))
            .await
            .is_err()
    );
    durable(&after, "moved", new, persist(&[(1, b"new")]))
        .await
        .unwrap();
    before.close().await;
    after.close().await;
}

/// After PostgreSQL restarts, the same store writes and reads again
/// without being reopened.
async fn writer_survives_a_postgres_restart(fixture: &Fixture) {
    let Fixture::Pg(pg) = fixture else {
        return;
    };
    let a = fixture.open("a", Duration::from_secs(30)).await;
    let fence = owned(&a, "restart").await;
    durable(&a, "restart", fence, persist(&[(1, b"before")]))
        .await
        .unwrap();
    pg.stop();
    pg.start_again();
    // The first write after the restart may find the old connection dead
    // and retry on a new one; it must not need more than that.
    durable(&a, "restart", fence, persist(&[(2, b"after")]))
        .await
        .unwrap();
    let (_, entries) = a.load("restart".into()).await.unwrap();
    assert_eq!(
        entries,
        vec![(1, b"before".to_vec()), (2, b"after".to_vec())]
    );
    a.close().await;
}
