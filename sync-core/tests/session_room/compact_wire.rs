//! Protocol version 3, the compact wire: a client that offers it gets it,
//! a version-2 client in the same room keeps version 2, and the room
//! encodes a version-3 `Deliver` once for every connection at its cursor.

use sync_core::protocol::{self, CloseCode, Message};
use sync_core::room::{RoomConfig, RoomOutput};

use crate::harness::{World, session_config};

/// The version byte of every frame the room sent to connection `conn`.
fn room_versions_to(w: &World, conn: u64) -> Vec<u8> {
    w.room_trace
        .iter()
        .filter_map(|o| match o {
            RoomOutput::Transmit { connection, frame } if *connection == conn => {
                frame.first().copied()
            }
            _ => None,
        })
        .collect()
}

/// The version byte of every frame client `i` sent.
fn client_versions(w: &World, i: usize) -> Vec<u8> {
    w.c(i)
        .outputs
        .iter()
        .filter_map(|o| match o {
            sync_core::session::Output::Transmit(f) => f.first().copied(),
            _ => None,
        })
        .collect()
}

#[test]
fn a_version_2_and_a_version_3_client_share_a_room_and_converge() {
    let mut w = World::new(RoomConfig::default());
    let old = w.add_client_with(1, session_config().with_protocol_versions(vec![2]));
    let new = w.add_client(2);
    w.start(old);
    w.start(new);
    assert_eq!(w.c(old).welcomes()[0].version, 2);
    assert_eq!(w.c(new).welcomes()[0].version, 3, "the newest both speak");
    w.write_many(old, "old", 30);
    w.write_many(new, "new", 30);
    w.put(old, "shared", "a", "from v2");
    w.put(new, "shared", "b", "from v3");
    w.settle();
    w.assert_converged();

    // Every frame after `Hello` carries the agreed version, both ways.
    let (old_conn, new_conn) = (w.conn(old), w.conn(new));
    assert!(room_versions_to(&w, old_conn).iter().all(|&v| v == 2));
    let to_new = room_versions_to(&w, new_conn);
    assert!(
        to_new.len() > 2 && to_new.iter().all(|&v| v == 3),
        "{to_new:?}"
    );
    assert!(client_versions(&w, old).iter().all(|&v| v == 2));
    let from_new = client_versions(&w, new);
    assert_eq!(from_new[0], 2, "Hello is always a version-2 frame");
    assert!(from_new[1..].iter().all(|&v| v == 3), "{from_new:?}");
    // Both clients pushed, and each received the other's operations.
    assert!(w.c(new).pushes().iter().map(Vec::len).sum::<usize>() == 31);
    let got = |i: usize| -> usize { w.c(i).deliveries().iter().map(|d| d.2.len()).sum() };
    assert!(got(old) >= 31 && got(new) >= 31);
}

#[test]
fn receivers_at_one_cursor_get_the_same_version_3_frame() {
    let mut w = World::new(RoomConfig::default());
    let writer = w.add_client(1);
    let readers: Vec<usize> = (2..=5).map(|id| w.add_client(id)).collect();
    w.start(writer);
    for &r in &readers {
        w.start(r);
    }
    w.write_many(writer, "d", 40);
    w.assert_converged();
    let frames: Vec<Vec<bytes::Bytes>> = readers
        .iter()
        .map(|&r| {
            let conn = w.conn(r);
            w.room_trace
                .iter()
                .filter_map(|o| match o {
                    RoomOutput::Transmit { connection, frame }
                        if *connection == conn
                            && protocol::peek_kind(frame)
                                == Some(protocol::MessageKind::Deliver) =>
                    {
                        Some(frame.clone())
                    }
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert!(!frames[0].is_empty());
    for other in &frames[1..] {
        assert_eq!(other, &frames[0], "byte for byte the same deliveries");
    }
    // The writer holds its own operations: its deliveries carry none.
    assert!(
        w.c(writer).deliveries().iter().all(|d| d.2.is_empty()),
        "{:?}",
        w.c(writer).deliveries()
    );
}

#[test]
fn a_version_3_receiver_skips_its_own_operations_in_a_shared_frame() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    // a stops reading: its send window fills with b's writes, and the
    // room has b's and a's later writes to send it in the same ranges.
    w.cm(a).hold_inbound = true;
    for k in 0..8 {
        w.put(b, &format!("b{k}"), "n", k);
        w.settle();
    }
    w.put(a, "shared", "x", 1);
    w.put(a, "mine", "y", 2);
    w.settle();
    w.write_many(b, "later", 3);
    w.cm(a).hold_inbound = false;
    w.settle();
    w.assert_converged();
    let own_back = w
        .c(a)
        .deliveries()
        .iter()
        .flat_map(|d| d.2.clone())
        .filter(|op| op.id.replica == w.c(a).id)
        .count();
    assert!(
        own_back > 0,
        "a's own operations rode along in shared frames"
    );
    assert!(
        w.c(a).disconnects().is_empty(),
        "{:?}",
        w.c(a).disconnects()
    );
}

#[test]
fn a_frame_in_another_version_than_agreed_is_a_protocol_error() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    assert_eq!(w.c(a).welcomes()[0].version, 3);
    let conn = w.conn(a);
    // A valid version-2 `Ping` on a version-3 connection.
    w.inject_to_room(a, &protocol::encode(&Message::Ping { nonce: 1 }));
    assert_eq!(w.room_closes(conn), vec![CloseCode::ProtocolError]);
}

/// A relay host may refuse a session itself, with an `Error` in version 2
/// (its layout is the same in every version): a version-3 client reads it.
#[test]
fn a_version_3_client_reads_an_error_of_version_2() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let error = protocol::encode(&Message::Error {
        code: sync_core::protocol::ErrorCode::RateLimited,
        message: "slow down".into(),
    });
    w.client_input(a, sync_core::session::Input::Received(&error));
    assert_eq!(w.c(a).closes(), vec![CloseCode::RateLimited]);
    // Any other message in the wrong version is a protocol error.
    w.advance(60_000);
    let ping = protocol::encode(&Message::Ping { nonce: 1 });
    w.client_input(a, sync_core::session::Input::Received(&ping));
    assert_eq!(
        w.c(a).closes(),
        vec![CloseCode::RateLimited, CloseCode::ProtocolError]
    );
}

/// Small operations cost a version-3 decoder more (32 bytes each plus
/// their names, PROTOCOL.md 7.1) than their version-2 bytes: a batch cut
/// by version-2 bytes alone can be refused by a receiver whose frame limit
/// just holds `max_batch_bytes`. The room cuts by the larger of the two.
#[test]
fn version_3_batches_of_small_operations_decode_within_the_batch_limit() {
    const BATCH: usize = 4096;
    let limit = BATCH + 64;
    let mut w = World::new(RoomConfig::default().with_max_batch_bytes(BATCH));
    let writer = w.add_client(1);
    let reader = w.add_client_with(2, session_config().with_max_frame_bytes(limit));
    w.start(writer);
    w.start(reader);
    // The reader holds its window full while the writer's pushes land, so
    // the room then cuts the backlog into batches by its limits.
    w.cm(reader).hold_inbound = true;
    w.write_many(writer, "d", 1000);
    w.settle();
    w.cm(reader).hold_inbound = false;
    w.settle();
    // A batch over its frame limit is malformed to the reader, which closes.
    assert!(
        w.c(reader).closes().is_empty(),
        "{:?}",
        w.c(reader).closes()
    );
    let conn = w.conn(reader);
    let delivers: Vec<&bytes::Bytes> = w
        .room_trace
        .iter()
        .filter_map(|o| match o {
            RoomOutput::Transmit { connection, frame }
                if *connection == conn
                    && protocol::peek_kind(frame) == Some(protocol::MessageKind::Deliver) =>
            {
                Some(frame)
            }
            _ => None,
        })
        .collect();
    assert!(delivers.len() > 1);
    for frame in delivers {
        assert_eq!(frame.first(), Some(&protocol::COMPACT_VERSION));
        if let Err(e) = protocol::decode(frame, limit) {
            panic!(
                "a {}-byte Deliver does not decode within {limit}: {e}",
                frame.len()
            );
        }
    }
    assert!(
        w.c(reader).closes().is_empty(),
        "{:?}",
        w.c(reader).closes()
    );
    w.assert_converged();
}
