//! A connection's bounded outbound queue, as seen by whoever sends to it.
//!
//! Room hosts and the connection itself enqueue frames without waiting: a
//! queue that is full (in frames or in bytes) means the client does not keep
//! up, and the sender cuts it off instead of buffering more. A cut-off
//! ([`Peer::kill`]) bypasses the queue, so it works when the queue is full.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use sync_core::protocol::{self, CloseCode, ErrorCode, Message};
use tokio::sync::{Notify, mpsc};

/// What a connection's writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A binary frame, and when a room queued it if the writer is to
    /// time its send (`Deliver`s a commit released). Shared bytes: a room
    /// queues the same `Deliver` to many sessions without copying it.
    Frame(Bytes, Option<Instant>),
    /// A close frame; the writer stops after it.
    Close {
        /// The WebSocket close code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// An immediate close, ahead of anything queued.
#[derive(Debug)]
pub(crate) struct Kill {
    /// An `Error` frame to send first, if any.
    pub(crate) error: Option<Vec<u8>>,
    /// The close code.
    pub(crate) code: u16,
    /// Why.
    pub(crate) reason: String,
}

/// State shared by a connection's senders and its writer.
#[derive(Debug, Default)]
pub(crate) struct Control {
    queued_bytes: AtomicUsize,
    /// Pushes handed to the room and not yet answered by an `Ack` or a
    /// `Rejected` the writer took off the queue.
    unanswered_pushes: AtomicUsize,
    kill: Mutex<Option<Kill>>,
    /// Wakes the writer for a kill.
    pub(crate) wake: Notify,
}

impl Control {
    /// Takes the pending kill, if any.
    pub(crate) fn take_kill(&self) -> Option<Kill> {
        self.kill.lock().ok().and_then(|mut k| k.take())
    }

    /// The writer took a frame of `len` bytes off the queue.
    pub(crate) fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// A push was handed to the room.
    pub(crate) fn pushed(&self) {
        self.unanswered_pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The writer is sending a frame: if it answers a push (`Ack` or
    /// `Rejected`), one push fewer awaits its answer. A push answered by
    /// both (`ClockAhead`) counts twice; the count only errs low.
    pub(crate) fn sending(&self, frame: &[u8]) {
        if matches!(
            protocol::peek_kind(frame),
            Some(protocol::MessageKind::Ack | protocol::MessageKind::Rejected)
        ) {
            let _ =
                self.unanswered_pushes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
        }
    }

    /// Pushes handed to the room and not answered yet.
    pub(crate) fn unanswered_pushes(&self) -> usize {
        self.unanswered_pushes.load(Ordering::Relaxed)
    }
}

/// The queue is full: the client does not keep up.
#[derive(Debug)]
pub(crate) struct Full;

/// The sending side of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    tx: mpsc::Sender<Outbound>,
    control: Arc<Control>,
    max_bytes: usize,
}

impl Peer {
    /// A queue of at most `frames` frames and `max_bytes` bytes.
    pub(crate) fn new(frames: usize, max_bytes: usize) -> (Peer, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(frames.max(1));
        let peer = Peer {
            tx,
            control: Arc::new(Control::default()),
            max_bytes,
        };
        (peer, rx)
    }

    /// The shared state, for the writer.
    pub(crate) fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Queues a frame. A closed connection swallows it.
    pub(crate) fn send(&self, frame: impl Into<Bytes>) -> Result<(), Full> {
        self.send_timed(frame.into(), None)
    }

    /// [`Peer::send`], with the moment it was queued if the writer is to
    /// time its send (`concord_send_seconds`).
    pub(crate) fn send_timed(&self, frame: Bytes, queued: Option<Instant>) -> Result<(), Full> {
        let len = frame.len();
        let before = self.control.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > self.max_bytes {
            self.control.dequeued(len);
            return Err(Full);
        }
        match self.tx.try_send(Outbound::Frame(frame, queued)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.control.dequeued(len);
                Err(Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.control.dequeued(len);
                Ok(())
            }
        }
    }

    /// Queues a close frame after what is queued; if the queue is full,
    /// closes at once instead.
    pub(crate) fn close(&self, code: CloseCode, reason: String) {
        self.close_with(code.as_u16(), reason);
    }

    /// [`Peer::close`] with a raw WebSocket close code (one relayed from
    /// the relay instance that owns the room).
    pub(crate) fn close_with(&self, code: u16, reason: String) {
        let close = Outbound::Close { code, reason };
        if let Err(mpsc::error::TrySendError::Full(Outbound::Close { code, reason })) =
            self.tx.try_send(close)
        {
            self.kill_raw(None, code, reason);
        }
    }

    /// Sends `Error { code, message }` then closes with the code's close
    /// code, after what is queued (or at once if the queue is full).
    pub(crate) fn error_and_close(&self, code: ErrorCode, message: String) {
        let frame = error_frame(code, &message);
        if self.send(frame).is_ok() {
            self.close(code.close_code(), message);
        } else {
            self.kill(code, message);
        }
    }

    /// Sends `Error { code, message }` and closes, ahead of anything queued.
    pub(crate) fn kill(&self, code: ErrorCode, message: String) {
        let frame = error_frame(code, &message);
        self.kill_raw(Some(frame), code.close_code().as_u16(), message);
    }

    fn kill_raw(&self, error: Option<Vec<u8>>, code: u16, reason: String) {
        if let Ok(mut kill) = self.control.kill.lock() {
            if kill.is_none() {
                *kill = Some(Kill {
                    error,
                    code,
                    reason,
                });
            }
        }
        self.control.wake.notify_one();
    }
}

/// An encoded `Error` message.
pub(crate) fn error_frame(code: ErrorCode, message: &str) -> Vec<u8> {
    protocol::encode(&Message::Error {
        code,
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_and_kill_bypasses_it() {
        let (peer, mut rx) = Peer::new(2, 1000);
        assert!(peer.send(vec![0; 10]).is_ok());
        assert!(peer.send(vec![0; 10]).is_ok());
        assert!(peer.send(vec![0; 10]).is_err());
        peer.error_and_close(ErrorCode::SlowConsumer, "slow".into());
        let kill = peer.control().take_kill().unwrap();
        assert_eq!(kill.code, 4005);
        assert!(kill.error.is_some());
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_, None))));
    }

    #[test]
    fn byte_bound_applies() {
        let (peer, _rx) = Peer::new(100, 25);
        assert!(peer.send(vec![0; 20]).is_ok());
        assert!(peer.send(vec![0; 10]).is_err());
        peer.control().dequeued(20);
        assert!(peer.send(vec![0; 10]).is_ok());
    }
}
