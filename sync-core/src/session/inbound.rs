//! Operations and snapshots received but not yet applied.
//!
//! Each item stands for one received frame (a `Deliver`, or a snapshot's
//! last chunk) that the relay has not had confirmed yet: the frame is
//! confirmed when its item leaves the queue, so the relay's send window
//! bounds the queue.
//!
//! A remote stamp further ahead of the local wall clock than the drift
//! bound is refused by the clock. The relay has already accepted it against
//! its own clock, so the local clock is the one behind: the item waits here
//! until local time catches up, and everything received after it waits
//! behind it, so the stored cursor never skips an unapplied operation.

use crate::Timestamp;
use std::collections::VecDeque;

use super::Output;
use crate::event::Event;
use crate::gate::Gate;
use crate::op::Op;
use crate::replica::Replica;
use crate::snapshot::{Snapshot, SnapshotDecoder, SnapshotError};

/// One received item.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Operations of one `Deliver`, applied through `cursor` once empty.
    Ops { ops: Vec<Op>, cursor: u64 },
    /// A snapshot through `cursor`, received whole, being decoded a slice
    /// at a time; it becomes a `Snapshot` once its last slice is decoded.
    Decoding {
        decoder: Box<SnapshotDecoder>,
        cursor: u64,
    },
    /// A decoded snapshot through `cursor`; `started` once the replica
    /// holds it and is rewriting records a slice at a time (the item then
    /// stays at the front, holding back the cursor, until that is done).
    Snapshot {
        snapshot: Box<Snapshot>,
        /// Its [`Snapshot::newest_hlc`], which the clock checks.
        newest: crate::hlc::Hlc,
        /// The snapshot's bytes as received, stored as the checkpoint.
        bytes: Option<Vec<u8>>,
        cursor: u64,
        started: bool,
    },
}

impl Inbound {
    /// Wall time of the stamp the clock is waiting for.
    fn blocking_wall_ms(&self) -> Option<u64> {
        match self {
            Inbound::Ops { ops, .. } => ops.iter().map(|op| op.hlc.wall_ms()).min(),
            Inbound::Snapshot { started: true, .. } | Inbound::Decoding { .. } => None,
            Inbound::Snapshot { newest, .. } => Some(newest.wall_ms()),
        }
    }
}

/// Received items in arrival order.
#[derive(Debug, Default)]
pub(super) struct InboundQueue {
    items: VecDeque<Inbound>,
    skew_reported: bool,
    /// See [`InboundQueue::ready`].
    ready: bool,
}

impl InboundQueue {
    pub(super) fn push(&mut self, item: Inbound) {
        self.items.push_back(item);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the front item is a snapshot the replica is applying.
    pub(super) fn applying_front(&self) -> bool {
        matches!(
            self.items.front(),
            Some(Inbound::Snapshot { started: true, .. })
        )
    }

    /// Whether the last [`InboundQueue::drain`] stopped with work it could
    /// go on with at once (rather than with nothing left, or with the
    /// front item waiting for the clock).
    pub(super) fn ready(&self) -> bool {
        self.ready
    }

    /// Forgets everything: the relay sends it again after reconnecting,
    /// starting from the stored cursor.
    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.ready = false;
        self.skew_reported = false;
    }

    /// On losing the connection: forgets everything but a snapshot being
    /// decoded or applied at the front, which the replica finishes offline
    /// (its cursor is then stored, so the next connection does not fetch it
    /// again); the relay sends what came after it again.
    pub(super) fn keep_snapshot_only(&mut self) {
        let keep = matches!(
            self.items.front(),
            Some(Inbound::Decoding { .. } | Inbound::Snapshot { started: true, .. })
        );
        self.items.truncate(usize::from(keep));
        self.ready &= keep;
        self.skew_reported = false;
    }

    /// When the front item could pass the drift check.
    pub(super) fn retry_at(&self, max_drift_ms: u64) -> Option<u64> {
        self.items
            .front()?
            .blocking_wall_ms()
            .map(|wall| wall.saturating_sub(max_drift_ms))
    }

    /// Applies items from the front while the clock accepts them, a slice
    /// of work a call: one step of decoding a snapshot (`slice_docs`
    /// documents), or of applying one (see [`Replica::continue_reset`]), or
    /// up to `slice_docs` received operations. What is left stays at the
    /// front for later calls, and [`InboundQueue::ready`] says so. A
    /// snapshot found corrupt is dropped unapplied and reported; nothing
    /// after it is applied.
    pub(super) fn drain(
        &mut self,
        now: u64,
        replica: &mut Replica,
        outputs: &mut Gate<Output>,
        slice_docs: usize,
    ) -> Drained {
        let at = Timestamp::from_unix_ms(now);
        let mut applied_through = None;
        let mut budget = slice_docs.max(1);
        let mut frames = 0;
        self.ready = false;
        while let Some(front) = self.items.front_mut() {
            if budget == 0 {
                self.ready = true;
                break;
            }
            if let Inbound::Decoding { decoder, .. } = front {
                match decoder.step(budget) {
                    Ok(None) => {
                        self.ready = true;
                        break;
                    }
                    Ok(Some(snapshot)) => {
                        if let Some(Inbound::Decoding { decoder, cursor }) = self.items.pop_front()
                        {
                            self.items.push_front(Inbound::Snapshot {
                                newest: decoder.newest(),
                                snapshot: Box::new(snapshot),
                                bytes: Some(decoder.into_bytes()),
                                cursor,
                                started: false,
                            });
                        }
                        // The decoding step was this call's slice: the
                        // replica takes the snapshot now (so reads see it
                        // once it is decoded), but its documents are
                        // rewritten from the next call on.
                        budget = 0;
                    }
                    Err(e) => {
                        self.items.pop_front();
                        return Drained {
                            through: applied_through,
                            frames,
                            bad_snapshot: Some(e),
                        };
                    }
                }
            }
            // The front may have changed: a decoded snapshot replaced it.
            let Some(front) = self.items.front_mut() else {
                break;
            };
            let (blocked, cursor, ahead) = match front {
                Inbound::Ops { ops, cursor } => {
                    let mut ahead = 0;
                    for op in std::mem::take(ops) {
                        if budget == 0 {
                            ops.push(op);
                        } else if replica.check_drift(op.hlc, at).is_err() {
                            ahead = ahead.max(op.hlc.wall_ms().saturating_sub(now));
                            ops.push(op);
                        } else {
                            budget -= 1;
                            if let Err(e) = replica.apply_owned(at, op) {
                                outputs.push(Output::Event(Event::PeerMisbehaved {
                                    reason: e.to_string(),
                                }));
                            }
                        }
                    }
                    if budget == 0 && !ops.is_empty() {
                        // The rest in the next call; the cursor waits for it.
                        self.ready = true;
                        break;
                    }
                    (!ops.is_empty(), *cursor, ahead)
                }
                Inbound::Snapshot {
                    snapshot,
                    newest,
                    bytes,
                    cursor,
                    started,
                } => {
                    let newest = *newest;
                    if !*started && replica.check_drift(newest, at).is_err() {
                        (true, *cursor, newest.wall_ms().saturating_sub(now))
                    } else {
                        if !*started {
                            *started = true;
                            let snapshot = std::mem::replace(snapshot, Box::new(Snapshot::empty()));
                            if let Err(e) =
                                replica.start_reset_received(at, *snapshot, bytes.take(), newest)
                            {
                                outputs.push(Output::Event(Event::PeerMisbehaved {
                                    reason: e.to_string(),
                                }));
                            }
                        }
                        if budget == 0 || replica.continue_reset(budget) {
                            // More slices to go: the cursor waits for them.
                            self.ready = true;
                            break;
                        }
                        budget = 0;
                        (false, *cursor, 0)
                    }
                }
                // Taken care of above.
                Inbound::Decoding { .. } => break,
            };
            if blocked {
                if !self.skew_reported {
                    self.skew_reported = true;
                    let ahead_ms = i64::try_from(ahead).unwrap_or(i64::MAX);
                    outputs.push(Output::Event(Event::ClockSkew { ahead_ms }));
                }
                break;
            }
            self.items.pop_front();
            self.skew_reported = false;
            applied_through = Some(cursor);
            frames += 1;
        }
        Drained {
            through: applied_through,
            frames,
            bad_snapshot: None,
        }
    }
}

/// What [`InboundQueue::drain`] got through.
pub(super) struct Drained {
    /// The cursor of the last item fully applied, if any was.
    pub(super) through: Option<u64>,
    /// How many items (received frames) left the queue.
    pub(super) frames: u32,
    /// Why a received snapshot was refused, if one was.
    pub(super) bad_snapshot: Option<SnapshotError>,
}
