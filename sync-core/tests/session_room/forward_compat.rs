//! Codes a newer relay may send that this build does not know: an unknown
//! `ErrorCode` in `Error`, `Rejected` or `Ack.refused`, and an unknown close
//! code, are understood as "unknown", never as a malformed frame.

use sync_core::Event;
use sync_core::protocol::{CloseCode, ErrorCode, Message};
use sync_core::room::RoomConfig;
use sync_core::session::{Input, LinkState};

use crate::harness::{World, msg};

fn misbehaved(w: &World, i: usize) -> usize {
    w.c(i)
        .events()
        .iter()
        .filter(|e| matches!(e, Event::PeerMisbehaved { .. }))
        .count()
}

#[test]
fn an_error_with_an_unknown_code_closes_4000_and_reconnects() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let frame = crate::harness::frame(&Message::Error {
        code: ErrorCode::Unknown(200),
        message: "from a newer relay".into(),
    });
    w.client_input(a, Input::Received(&frame));
    assert_eq!(misbehaved(&w, a), 0, "not a malformed frame");
    let last = *w.c(a).disconnects().last().expect("disconnected");
    assert_eq!(last.0, CloseCode::ProtocolError);
    assert!(last.1.is_some(), "reconnects");
}

#[test]
fn a_rejected_with_an_unknown_code_pauses_pushing_and_pushes_again() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.cm(a).drop_outbound = true;
    w.put(a, "x", "n", 1);
    w.cm(a).drop_outbound = false;
    let pushes_before = w.c(a).pushes().len();
    let frame = crate::harness::frame(&Message::Rejected {
        seq: 1,
        code: ErrorCode::Unknown(300),
        retry_after_ms: 2000,
        message: "later".into(),
    });
    w.client_input(a, Input::Received(&frame));
    assert_eq!(misbehaved(&w, a), 0, "not a malformed frame");
    assert_eq!(w.c(a).link(), LinkState::Live, "the session stays open");
    w.advance(1_500);
    assert_eq!(w.c(a).pushes().len(), pushes_before, "paused");
    w.advance(600);
    assert_eq!(w.c(a).pushes().len(), pushes_before + 1, "pushed again");
    assert_eq!(w.c(a).pending(), 0, "and acknowledged");
}

#[test]
fn an_ack_refusing_with_an_unknown_code_still_refuses_for_good() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.cm(a).drop_outbound = true;
    w.put(a, "x", "n", 1);
    w.cm(a).drop_outbound = false;
    let frame = crate::harness::frame(&Message::Ack {
        through_seq: 1,
        refused: vec![(1, ErrorCode::Unknown(99))],
    });
    w.cm(a).hold_inbound = true;
    w.client_input(a, Input::Received(&frame));
    assert_eq!(misbehaved(&w, a), 0, "not a malformed frame");
    let refused: Vec<_> = w
        .c(a)
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::OpsRejected { seqs, code, .. } => Some((seqs, code)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![(vec![1], ErrorCode::Unknown(99))]);
    assert_eq!(w.c(a).pending(), 0);
}

#[test]
fn an_unknown_close_code_is_kept_and_the_client_reconnects() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.cut(a, Some(4999));
    let (code, retry_at) = *w.c(a).disconnects().last().expect("disconnected");
    assert_eq!(code, CloseCode::Other(4999));
    assert!(retry_at.is_some());
    w.advance(1_000);
    assert_eq!(w.c(a).link(), LinkState::Live, "reconnected");
    // The frames themselves are decoded, not refused.
    assert!(matches!(
        msg(&crate::harness::frame(&Message::Error {
            code: ErrorCode::Unknown(7_000),
            message: String::new()
        })),
        Message::Error {
            code: ErrorCode::Unknown(7_000),
            ..
        }
    ));
}
