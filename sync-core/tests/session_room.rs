//! Focused, deterministic behaviour tests of the client [`Session`] and the
//! relay [`Room`] state machines, driven against each other by a tiny
//! in-test host (`session_room/harness.rs`): no randomness, no simulated
//! faults beyond what each test sets up, virtual time that only moves when
//! a test moves it.
//!
//! Each module covers one behaviour of the protocol; each test is named for
//! the behaviour it pins. Tests marked `#[ignore = "bug: ..."]` describe a
//! real defect of the state machines and fail until it is fixed.
//!
//! [`Session`]: sync_core::session::Session
//! [`Room`]: sync_core::room::Room

#[path = "session_room/harness.rs"]
mod harness;

#[path = "session_room/clock.rs"]
mod clock;
#[path = "session_room/coalesce.rs"]
mod coalesce;
#[path = "session_room/compact_wire.rs"]
mod compact_wire;
#[path = "session_room/fanout.rs"]
mod fanout;
#[path = "session_room/findings.rs"]
mod findings;
#[path = "session_room/flow.rs"]
mod flow;
#[path = "session_room/forward_compat.rs"]
mod forward_compat;
#[path = "session_room/handshake.rs"]
mod handshake;
#[path = "session_room/liveness.rs"]
mod liveness;
#[path = "session_room/malformed.rs"]
mod malformed;
#[path = "session_room/negotiation.rs"]
mod negotiation;
#[path = "session_room/push.rs"]
mod push;
#[path = "session_room/read_only.rs"]
mod read_only;
#[path = "session_room/restore.rs"]
mod restore;
#[path = "session_room/resume.rs"]
mod resume;
#[path = "session_room/retention.rs"]
mod retention;
#[path = "session_room/stale.rs"]
mod stale;
