//! Version and snapshot-format negotiation in the handshake: `Hello` lists
//! what the client speaks and reads, `Welcome` names what the relay chose,
//! and a client that reads only an older snapshot format gets the room's
//! snapshot re-encoded in it.

use sync_core::Snapshot;
use sync_core::Timestamp;
use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message};
use sync_core::room::{RoomConfig, RoomInput};
use sync_core::session::LinkState;

use crate::harness::{ROOM, World, session_config};

/// The snapshot blob a client was sent, reassembled from its chunks.
fn snapshot_received(w: &World, i: usize) -> Vec<u8> {
    let mut blob = Vec::new();
    for m in w.c(i).received() {
        if let Message::SnapshotChunk { offset, bytes, .. } = m {
            if offset == 0 {
                blob.clear();
            }
            blob.extend_from_slice(&bytes);
        }
    }
    blob
}

#[test]
fn hello_lists_versions_and_formats_and_welcome_names_the_choice() {
    let mut w = World::new(RoomConfig::default());
    let mut config = session_config();
    config.snapshot_formats = vec![2, 1];
    let a = w.add_client_with(1, config);
    w.start(a);
    let hello = &w.c(a).hellos()[0];
    assert_eq!(hello.versions, vec![2, 3]);
    assert_eq!(hello.snapshot_formats, vec![2, 1]);
    let welcome = &w.c(a).welcomes()[0];
    assert_eq!(
        welcome.version,
        protocol::COMPACT_VERSION,
        "the newest both speak"
    );
    assert_eq!(welcome.snapshot_format, 2, "the newest format both know");
    assert_eq!(w.c(a).link(), LinkState::Live);
}

/// A room whose stored snapshot is format 5 (deflated columns with a
/// timeline) serves a client that reads only format 1 the same snapshot in
/// format 1, one that reads up to format 3 or 4 the same snapshot in that
/// format, and they converge.
#[test]
fn older_clients_get_the_format_5_snapshot_re_encoded() {
    let mut w = World::new(RoomConfig::default());
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "doc", 50);
    w.put(writer, "doc3", "n", "changed");
    w.delete(writer, "doc4");
    w.compact_now();
    let stored = w.room_store.snapshot.clone().expect("a stored snapshot").1;
    assert_eq!(
        Snapshot::format_of(&stored),
        Some(5),
        "relays store format 5"
    );

    let mut config = session_config();
    config.snapshot_formats = vec![1];
    let old = w.add_client_with(1, config);
    w.start(old);

    assert_eq!(w.c(old).welcomes()[0].snapshot_format, 1);
    let blob = snapshot_received(&w, old);
    assert_eq!(Snapshot::format_of(&blob), Some(1), "sent in format 1");
    assert_eq!(
        Snapshot::decode(&blob).expect("decodes"),
        Snapshot::decode(&stored).expect("decodes"),
        "the same snapshot"
    );
    assert!(
        w.c(old).disconnects().is_empty(),
        "{:?}",
        w.c(old).disconnects()
    );
    w.assert_converged();

    // A client that reads formats 1 to 3 gets format 3.
    let mut config = session_config();
    config.snapshot_formats = vec![1, 2, 3];
    let older = w.add_client_with(4, config);
    w.start(older);
    assert_eq!(w.c(older).welcomes()[0].snapshot_format, 3);
    let blob = snapshot_received(&w, older);
    assert_eq!(Snapshot::format_of(&blob), Some(3), "sent in format 3");
    assert_eq!(
        Snapshot::decode(&blob).expect("decodes"),
        Snapshot::decode(&stored).expect("decodes"),
        "the same snapshot"
    );

    // A client that reads up to format 4 gets format 4.
    let mut config = session_config();
    config.snapshot_formats = vec![1, 2, 3, 4];
    let columns = w.add_client_with(5, config);
    w.start(columns);
    assert_eq!(w.c(columns).welcomes()[0].snapshot_format, 4);
    let blob = snapshot_received(&w, columns);
    assert_eq!(Snapshot::format_of(&blob), Some(4), "sent in format 4");
    assert_eq!(
        Snapshot::decode(&blob).expect("decodes"),
        Snapshot::decode(&stored).expect("decodes"),
        "the same snapshot"
    );

    // A client that reads format 5 gets the stored bytes as they are.
    let new = w.add_client(3);
    w.start(new);
    assert_eq!(snapshot_received(&w, new), stored);
    w.assert_converged();
}

/// A client that reads only format 1 refuses a snapshot in another format
/// (what an old client would do), so the relay must not send one.
#[test]
fn a_client_refuses_a_snapshot_format_it_did_not_offer() {
    let mut w = World::new(RoomConfig::default());
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "doc", 5);
    w.compact_now();
    let mut config = session_config();
    config.snapshot_formats = vec![1];
    let old = w.add_client_with(1, config);
    w.cm(old).hold_inbound = true;
    w.start(old);
    assert!(matches!(w.deliver_next_to(old), Some(Message::Welcome(_))));
    assert_eq!(w.c(old).link(), LinkState::Live);
    // Hand the client the stored (format 5) snapshot instead.
    let stored = w.room_store.snapshot.clone().expect("snapshot");
    let frame = crate::harness::frame(&Message::SnapshotChunk {
        cursor: stored.0,
        total_len: stored.1.len() as u64,
        offset: 0,
        bytes: stored.1,
    });
    w.client_input(old, sync_core::session::Input::Received(&frame));
    assert_eq!(w.c(old).closes(), vec![CloseCode::ProtocolError]);
}

/// Nothing in common: the relay answers `Error { UnsupportedVersion }` and
/// closes with 4001, after which a client does not reconnect.
#[test]
fn nothing_in_common_is_refused_with_4001() {
    let mut w = World::new(RoomConfig::default());
    let cases = [
        (vec![protocol::COMPACT_VERSION + 1], vec![3]),
        (vec![protocol::PROTOCOL_VERSION], vec![9]),
    ];
    for (n, (versions, snapshot_formats)) in cases.into_iter().enumerate() {
        let session = 100 + n as u64;
        w.room.handle(
            Timestamp::from_unix_ms(w.now),
            RoomInput::Join {
                connection: session,
                hello: Hello {
                    replica: sync_core::ReplicaId(50 + n as u64),
                    room: ROOM.into(),
                    token: Vec::new(),
                    cursor: 0,
                    own_seq: 0,
                    settled_seq: 0,
                    agent: "future".into(),
                    versions,
                    snapshot_formats,
                },
                read_only: false,
            },
        );
        w.settle();
        let sent = w.room_sent_to(session);
        assert!(
            matches!(
                sent.as_slice(),
                [Message::Error {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }]
            ),
            "{sent:?}"
        );
        assert_eq!(w.room_closes(session), vec![CloseCode::UnsupportedVersion]);
        assert!(!CloseCode::UnsupportedVersion.should_reconnect());
        assert_eq!(w.room.member_count(), 0);
    }
}

/// A relay that speaks only an older protocol refuses the `Hello` in its
/// own version; the client reads that `Error` all the same and stops.
#[test]
fn a_refusal_in_another_version_stops_the_client() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.cm(a).hold_inbound = true;
    w.start(a);
    let refusal = protocol::encode_version_refusal(1, "protocol version 1 only");
    w.client_input(a, sync_core::session::Input::Received(&refusal));
    assert_eq!(w.c(a).closes(), vec![CloseCode::UnsupportedVersion]);
    assert_eq!(w.c(a).link(), LinkState::Offline);
}
