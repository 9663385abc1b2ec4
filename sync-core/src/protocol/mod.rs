//! The sync protocol's wire format: every message relay and client exchange.
//!
//! A frame is one WebSocket binary message: one byte of protocol version,
//! then one [`Message`]. Nothing else shares the frame. Version 2
//! ([`PROTOCOL_VERSION`]) encodes every message with postcard; version 3
//! ([`COMPACT_VERSION`]) differs only in the operations of `Push` and
//! `Deliver`, which it writes as a compact batch (name tables, delta
//! stamps, runs of sequence numbers). `docs/PROTOCOL.md` specifies each message byte by
//! byte; `tests/vectors/` pins the encoding.

mod codes;
pub(crate) mod compact;
mod message;
#[cfg(feature = "relay")]
mod relay;

pub use codes::{CloseCode, ErrorCode};
pub use message::{Hello, Message, Welcome};
#[cfg(feature = "relay")]
pub use relay::{
    Agreement, DeliverHeader, MessageKind, NegotiationError, SENDABLE_SNAPSHOT_FORMATS, decode_op,
    deliver_header, deliver_op_count, encode_deliver, encode_op, encode_version_refusal, negotiate,
    peek_kind, push_op_count,
};

/// Whether `name` is a valid room name: 1 to 256 UTF-8 bytes
/// ([`crate::limits::MAX_ROOM_NAME_LEN`]), none of them a control
/// character (Unicode category Cc: U+0000–U+001F and U+007F–U+009F). A
/// relay refuses any other name with `Error { InvalidRoom }` and close 4012.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::MAX_ROOM_NAME_LEN
        && !name.chars().any(char::is_control)
}

/// The base protocol version: the version byte [`encode`] writes, and the
/// one every `Hello` carries.
///
/// Version 1 had no negotiation; its frames are refused with an `Error`
/// that a version 1 peer can read (`encode_version_refusal`, with the
/// `relay` feature).
pub const PROTOCOL_VERSION: u8 = 2;

/// Protocol version 3: version 2 with compact operation batches in `Push`
/// and `Deliver` ([`encode_in`]). Every other message is laid out as in
/// version 2.
pub const COMPACT_VERSION: u8 = 3;

/// The protocol versions this build speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[u8] = &[PROTOCOL_VERSION, COMPACT_VERSION];

/// The protocol version whose layout `Hello` has in every version from it
/// on: a `Hello` frame always carries this version byte, so a relay can
/// read what the client speaks before anything is agreed.
pub const HELLO_VERSION: u8 = 2;

/// Most pushes a client may have awaiting their answer (`Ack` or
/// `Rejected`) at once. A relay that rate-limits holds pushes back, and
/// cuts off a session that has more than this many awaiting.
pub const MAX_PUSH_WINDOW: usize = 8;

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
    #[error("frame speaks protocol version {found}; this peer speaks versions 2 and 3")]
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

/// Encodes a message as a frame of protocol version 2.
pub fn encode(message: &Message) -> Vec<u8> {
    // Every message type has known lengths, so postcard cannot fail here;
    // were it to, the empty frame is refused by the peer as `Empty`.
    postcard::to_extend(message, vec![PROTOCOL_VERSION]).unwrap_or_default()
}

/// Encodes a message as a frame of `version`: [`COMPACT_VERSION`] writes
/// the operations of `Push` and `Deliver` as a compact batch; any other
/// version is encoded as version 2 ([`encode`]).
pub fn encode_in(version: u8, message: &Message) -> Vec<u8> {
    if version != COMPACT_VERSION {
        return encode(message);
    }
    let mut frame = vec![COMPACT_VERSION];
    match message {
        Message::Push { ops } => {
            push_varint(&mut frame, PUSH_TAG);
            compact::encode_batch(&mut frame, ops);
        }
        Message::Deliver { from, cursor, ops } => {
            push_varint(&mut frame, message::DELIVER_TAG);
            push_varint(&mut frame, *from);
            push_varint(&mut frame, *cursor);
            compact::encode_batch(&mut frame, ops);
        }
        other => {
            // Laid out as in version 2; only the version byte differs.
            frame = postcard::to_extend(other, frame).unwrap_or_default();
        }
    }
    frame
}

/// Reads an `Error` message from a frame of any protocol version (its
/// layout is the same in all of them): the version byte, the code and the
/// message. `None` for anything else. A client uses it to understand a
/// relay that refuses its `Hello` in another version.
pub fn decode_any_error(frame: &[u8]) -> Option<(u8, ErrorCode, String)> {
    let (&version, body) = frame.split_first()?;
    let (tag, body) = read_varint(body)?;
    if tag != ERROR_TAG {
        return None;
    }
    let mut patched = vec![PROTOCOL_VERSION];
    push_varint(&mut patched, ERROR_TAG);
    patched.extend_from_slice(body);
    match decode(&patched, patched.len()) {
        Ok(Message::Error { code, message }) => Some((version, code, message)),
        _ => None,
    }
}

/// Variant index of `Message::Error`.
pub(crate) const ERROR_TAG: u64 = 10;

/// Variant index of `Message::Push`.
pub(crate) const PUSH_TAG: u64 = 2;

/// Decodes a frame of any version this build speaks
/// ([`SUPPORTED_VERSIONS`]), no larger than `max_len` bytes. The frame's
/// first byte is its version; a peer checks it against the version agreed
/// in `Welcome`.
///
/// Never panics, and allocates no more than the frame's own length
/// justifies: every length prefix is checked against the bytes present,
/// and a version-3 batch may not expand past `max_len` (`docs/PROTOCOL.md`
/// section 7.1).
pub fn decode(frame: &[u8], max_len: usize) -> Result<Message, FrameError> {
    if frame.len() > max_len {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: max_len,
        });
    }
    let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    if version == COMPACT_VERSION {
        if let Some(message) = decode_compact_batch(body, max_len)? {
            return Ok(message);
        }
    }
    let (message, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// The version-3 `Push` or `Deliver` in `body` (a frame without its
/// version byte); `None` for any other message, which is laid out as in
/// version 2.
fn decode_compact_batch(body: &[u8], max_len: usize) -> Result<Option<Message>, FrameError> {
    let truncated = || FrameError::Malformed("truncated header".into());
    let Some((tag, rest)) = read_varint(body) else {
        return Ok(None);
    };
    let (message, rest) = match tag {
        PUSH_TAG => {
            let (ops, rest) = compact::decode_batch(rest, max_len)?;
            (Message::Push { ops }, rest)
        }
        message::DELIVER_TAG => {
            let (from, rest) = read_u64(rest).ok_or_else(truncated)?;
            let (cursor, rest) = read_u64(rest).ok_or_else(truncated)?;
            let (ops, rest) = compact::decode_batch(rest, max_len)?;
            (Message::Deliver { from, cursor, ops }, rest)
        }
        _ => return Ok(None),
    };
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(Some(message))
}

/// Reads a `u64` varint as postcard does: at most 10 bytes, the 10th at
/// most 1.
fn read_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (value, rest) = read_varint(bytes)?;
    let used = bytes.len() - rest.len();
    (used < 10 || bytes.get(9).is_some_and(|&b| b <= 1)).then_some((value, rest))
}

/// Reads one LEB128 varint; `None` when truncated or longer than 10 bytes.
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// LEB128 as postcard writes unsigned integers.
///
/// Inlined for the one-byte case (lengths of names and ids, small
/// integers), which a call would cost several times over; longer values
/// take the call.
#[inline]
pub(crate) fn push_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        push_long_varint(out, value);
    }
}

/// [`push_varint`] of a value of two bytes or more.
#[inline(never)]
fn push_long_varint(out: &mut Vec<u8>, value: u64) {
    // Built on the stack and appended in one copy: a push per byte checks
    // the vector's capacity every time.
    let mut buf = [0; 10];
    let len = put_varint(&mut buf, 0, value);
    out.extend_from_slice(&buf[..len]);
}

/// Writes `value` as [`push_varint`] does into `buf` at `at`; returns the
/// end. `buf` has room for the 10 bytes of any `u64` after `at`.
pub(crate) fn put_varint(buf: &mut [u8], mut at: usize, mut value: u64) -> usize {
    while value >= 0x80 {
        buf[at] = value as u8 | 0x80;
        value >>= 7;
        at += 1;
    }
    buf[at] = value as u8;
    at + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<(Message, MessageKind)> {
        use crate::protocol::{Hello, Welcome};
        use crate::stamp::ReplicaId;
        let hello = Hello {
            replica: ReplicaId(1),
            room: "r".into(),
            token: Vec::new(),
            cursor: 0,
            own_seq: 0,
            settled_seq: 0,
            agent: String::new(),
            versions: vec![PROTOCOL_VERSION],
            snapshot_formats: vec![1],
        };
        let welcome = Welcome {
            head: 0,
            accepted_seq: 0,
            relay_time_ms: 0,
            read_only: false,
            heartbeat_ms: 0,
            max_batch_ops: 0,
            max_batch_bytes: 0,
            refused: Vec::new(),
            cursor: 0,
            version: PROTOCOL_VERSION,
            snapshot_format: 1,
        };
        vec![
            (Message::Hello(hello), MessageKind::Hello),
            (Message::Welcome(welcome), MessageKind::Welcome),
            (Message::Push { ops: Vec::new() }, MessageKind::Push),
            (
                Message::Ack {
                    through_seq: 1,
                    refused: Vec::new(),
                },
                MessageKind::Ack,
            ),
            (
                Message::Deliver {
                    from: 0,
                    cursor: 0,
                    ops: Vec::new(),
                },
                MessageKind::Deliver,
            ),
            (
                Message::SnapshotChunk {
                    cursor: 0,
                    total_len: 0,
                    offset: 0,
                    bytes: Vec::new(),
                },
                MessageKind::SnapshotChunk,
            ),
            (
                Message::Applied {
                    cursor: 0,
                    frames: 1,
                },
                MessageKind::Applied,
            ),
            (
                Message::Rejected {
                    seq: 1,
                    code: ErrorCode::ReadOnly,
                    retry_after_ms: 0,
                    message: String::new(),
                },
                MessageKind::Rejected,
            ),
            (Message::Ping { nonce: 0 }, MessageKind::Ping),
            (Message::Pong { nonce: 0 }, MessageKind::Pong),
            (
                Message::Error {
                    code: ErrorCode::Internal,
                    message: String::new(),
                },
                MessageKind::Error,
            ),
        ]
    }

    #[test]
    fn peek_kind_names_every_message() {
        for (message, kind) in every_message() {
            assert_eq!(peek_kind(&encode(&message)), Some(kind), "{message:?}");
        }
        assert_eq!(peek_kind(&[]), None);
        assert_eq!(peek_kind(&[COMPACT_VERSION + 1, 3]), None);
        assert_eq!(peek_kind(&[PROTOCOL_VERSION, 99]), None);
    }

    #[test]
    fn deliver_op_count_reads_the_header() {
        let op = encode_op(&crate::op::Op {
            id: crate::op::OpId {
                replica: crate::stamp::ReplicaId(1),
                seq: 1,
            },
            hlc: crate::hlc::Hlc::ZERO,
            change: crate::op::Change::CreateCollection {
                collection: "c".into(),
            },
        });
        let frame = encode_deliver(300, 70_000, [op.as_slice(); 3].into_iter());
        assert_eq!(deliver_op_count(&frame), Some(3));
        let header = deliver_header(&frame).expect("a deliver");
        assert_eq!(
            header,
            DeliverHeader {
                from: 300,
                cursor: 70_000,
                op_count: 3
            }
        );
        assert_eq!(deliver_op_count(&encode(&Message::Ping { nonce: 3 })), None);
        assert_eq!(deliver_op_count(&frame[..3]), None);
    }

    #[test]
    fn push_op_count_reads_the_header_in_every_version() {
        let ops: Vec<_> = (1..=300)
            .map(|seq| crate::op::Op {
                id: crate::op::OpId {
                    replica: crate::stamp::ReplicaId(7),
                    seq,
                },
                hlc: crate::hlc::Hlc::ZERO,
                change: crate::op::Change::CreateCollection {
                    collection: format!("c{seq}"),
                },
            })
            .collect();
        let push = Message::Push { ops };
        for version in SUPPORTED_VERSIONS.iter().copied() {
            let frame = encode_in(version, &push);
            assert_eq!(push_op_count(&frame), Some(300), "version {version}");
            // The count's varint is two bytes: a header cut inside it is no count.
            assert_eq!(push_op_count(&frame[..3]), None, "version {version}");
        }
        let deliver = encode_deliver(0, 1, std::iter::empty());
        assert_eq!(push_op_count(&deliver), None);
        assert_eq!(push_op_count(&encode(&Message::Ping { nonce: 3 })), None);
    }
}
