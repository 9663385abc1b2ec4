//! The sync protocol's wire format: every message relay and client exchange.
//!
//! A frame is one WebSocket binary message: one byte of protocol version
//! ([`PROTOCOL_VERSION`]), then one postcard-encoded [`Message`]. Nothing
//! else shares the frame. `docs/PROTOCOL.md` specifies each message byte by
//! byte; `tests/vectors/` pins the encoding.

mod codes;
mod message;

pub use codes::{CloseCode, ErrorCode};
pub use message::{Hello, Message, Welcome};

use crate::op::Op;

/// The protocol version this build speaks; the first byte of every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame either side accepts by default (4 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// A frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The frame's version byte names a protocol this build does not speak.
    #[error("frame speaks protocol version {found}; this peer speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The frame is larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not decode as a message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decodes but has bytes left over.
    #[error("frame has {0} trailing bytes after its message")]
    TrailingBytes(usize),
}

impl FrameError {
    /// The close code a peer sends after refusing such a frame.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
            _ => CloseCode::ProtocolError,
        }
    }

    /// The error code for the error message sent before closing.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Encodes a message as a frame.
pub fn encode(message: &Message) -> Vec<u8> {
    // Every message type has known lengths, so postcard cannot fail here;
    // were it to, the empty frame is refused by the peer as `Empty`.
    postcard::to_extend(message, vec![PROTOCOL_VERSION]).unwrap_or_default()
}

/// Decodes a frame no larger than `max_len` bytes.
///
/// Never panics, and allocates no more than the frame's own length
/// justifies: every length prefix is checked against the bytes present.
pub fn decode(frame: &[u8], max_len: usize) -> Result<Message, FrameError> {
    if frame.len() > max_len {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: max_len,
        });
    }
    let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let (message, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// Builds a `Deliver` frame from operations already encoded one by one.
///
/// The relay encodes each operation once when it enters the room log and
/// fans the same bytes out to every session; this splices them into the
/// exact bytes [`encode`] would produce for
/// `Message::Deliver { from, cursor, ops }`.
pub fn encode_deliver<'a>(
    from: u64,
    cursor: u64,
    encoded_ops: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut frame = vec![PROTOCOL_VERSION];
    push_varint(&mut frame, message::DELIVER_TAG);
    push_varint(&mut frame, from);
    push_varint(&mut frame, cursor);
    push_varint(&mut frame, encoded_ops.len() as u64);
    for op in encoded_ops {
        frame.extend_from_slice(op);
    }
    frame
}

/// Encodes one operation as it appears inside `Push` and `Deliver`.
pub fn encode_op(op: &Op) -> Vec<u8> {
    postcard::to_allocvec(op).unwrap_or_default()
}

/// Decodes one operation encoded by [`encode_op`].
pub fn decode_op(bytes: &[u8]) -> Result<Op, FrameError> {
    let (op, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(op)
}

/// LEB128 as postcard writes unsigned integers.
fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
