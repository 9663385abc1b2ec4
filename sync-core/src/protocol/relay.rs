//! What only a relay needs of the wire format (the `relay` feature):
//! negotiating a `Hello`, refusing an old protocol version in its own
//! layout, splicing pre-encoded operations into `Deliver` frames, and
//! reading frame headers without a full decode.

use super::{
    ERROR_TAG, ErrorCode, FrameError, Hello, PROTOCOL_VERSION, SUPPORTED_VERSIONS, message,
    push_varint, read_varint,
};
use crate::op::Op;

/// Variant index of `ErrorCode::UnsupportedVersion`.
const ERROR_CODE_UNSUPPORTED_VERSION: u64 = 1;

/// What a relay of this build and a client agree on at the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The protocol version of every later frame.
    pub version: u8,
    /// The snapshot format snapshots are sent in.
    pub snapshot_format: u8,
}

/// Why a relay of this build cannot serve a `Hello`: nothing in common.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// No protocol version in common.
    #[error(
        "the client speaks protocol versions {offered:?}; this relay speaks {SUPPORTED_VERSIONS:?}"
    )]
    NoVersion {
        /// The versions the client listed.
        offered: Vec<u8>,
    },
    /// No snapshot format in common.
    #[error(
        "the client reads snapshot formats {offered:?}; this relay sends formats {}..={}",
        SENDABLE_SNAPSHOT_FORMATS.start(),
        SENDABLE_SNAPSHOT_FORMATS.end()
    )]
    NoSnapshotFormat {
        /// The formats the client listed.
        offered: Vec<u8>,
    },
}

impl NegotiationError {
    /// The error code of the `Error` the relay answers with; it closes with
    /// that code's close code (4001: retrying cannot help).
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::UnsupportedVersion
    }
}

/// What a relay of this build agrees to for `hello`: the newest protocol
/// version and the newest snapshot format both sides know.
pub fn negotiate(hello: &Hello) -> Result<Agreement, NegotiationError> {
    let version = hello
        .versions
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
        .ok_or_else(|| NegotiationError::NoVersion {
            offered: hello.versions.clone(),
        })?;
    let snapshot_format = hello
        .snapshot_formats
        .iter()
        .copied()
        .filter(|f| SENDABLE_SNAPSHOT_FORMATS.contains(f))
        .max()
        .ok_or_else(|| NegotiationError::NoSnapshotFormat {
            offered: hello.snapshot_formats.clone(),
        })?;
    Ok(Agreement {
        version,
        snapshot_format,
    })
}

/// The snapshot formats a relay of this build can send, oldest first: it
/// re-encodes its stored snapshot for a client that reads none of the
/// newer ones.
pub const SENDABLE_SNAPSHOT_FORMATS: std::ops::RangeInclusive<u8> =
    crate::snapshot::OLDEST_SNAPSHOT_FORMAT..=crate::snapshot::NEWEST_SNAPSHOT_FORMAT;

/// The `Error { UnsupportedVersion, message }` frame that refuses a frame
/// of protocol version `version`, written with that same version byte so
/// that its sender can read it. `Error` (message index 10: an `ErrorCode`
/// varint, then a string) is laid out alike in every protocol version.
pub fn encode_version_refusal(version: u8, message: &str) -> Vec<u8> {
    let mut frame = vec![version];
    push_varint(&mut frame, ERROR_TAG);
    push_varint(&mut frame, ERROR_CODE_UNSUPPORTED_VERSION);
    push_varint(&mut frame, message.len() as u64);
    frame.extend_from_slice(message.as_bytes());
    frame
}

/// Builds a `Deliver` frame from operations already encoded one by one.
///
/// The relay encodes each operation once when it enters the room log and
/// fans the same bytes out to every session; this splices them into the
/// exact bytes [`encode`](super::encode) would produce for
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

/// Which message a frame carries, read from its header without decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// `Message::Hello`.
    Hello,
    /// `Message::Welcome`.
    Welcome,
    /// `Message::Push`.
    Push,
    /// `Message::Ack`.
    Ack,
    /// `Message::Deliver`.
    Deliver,
    /// `Message::SnapshotChunk`.
    SnapshotChunk,
    /// `Message::Applied`.
    Applied,
    /// `Message::Rejected`.
    Rejected,
    /// `Message::Ping`.
    Ping,
    /// `Message::Pong`.
    Pong,
    /// `Message::Error`.
    Error,
}

/// The kind of message a frame of a version this build speaks carries, for hosts
/// that count or route frames without paying for a full decode. `None` for
/// a frame that is empty, of a version not spoken here, or of no known kind.
pub fn peek_kind(frame: &[u8]) -> Option<MessageKind> {
    let (version, rest) = frame.split_first()?;
    if !SUPPORTED_VERSIONS.contains(version) {
        return None;
    }
    let (tag, _) = read_varint(rest)?;
    Some(match tag {
        0 => MessageKind::Hello,
        1 => MessageKind::Welcome,
        2 => MessageKind::Push,
        3 => MessageKind::Ack,
        message::DELIVER_TAG => MessageKind::Deliver,
        5 => MessageKind::SnapshotChunk,
        6 => MessageKind::Applied,
        7 => MessageKind::Rejected,
        8 => MessageKind::Ping,
        9 => MessageKind::Pong,
        ERROR_TAG => MessageKind::Error,
        _ => return None,
    })
}

/// The header of a `Deliver` frame: its `from` and `cursor` offsets and
/// how many operations it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverHeader {
    /// The offset the batch continues from.
    pub from: u64,
    /// The offset to store once the batch is applied.
    pub cursor: u64,
    /// The length of its `ops`.
    pub op_count: u64,
}

/// Reads a `Deliver` frame's header (tag, `from`, `cursor`, then the length
/// of `ops`) without decoding its operations, for hosts that route, count
/// or confirm deliveries without applying them. `None` for any other frame
/// or a truncated header; the operations themselves are not checked.
pub fn deliver_header(frame: &[u8]) -> Option<DeliverHeader> {
    if peek_kind(frame)? != MessageKind::Deliver {
        return None;
    }
    let (_tag, rest) = read_varint(frame.get(1..)?)?;
    let (from, rest) = read_varint(rest)?;
    let (cursor, rest) = read_varint(rest)?;
    let (op_count, _) = read_varint(rest)?;
    Some(DeliverHeader {
        from,
        cursor,
        op_count,
    })
}

/// The number of operations a `Deliver` frame carries, read from its header
/// (tag, `from`, `cursor`, then the length of `ops`), without decoding them.
pub fn deliver_op_count(frame: &[u8]) -> Option<u64> {
    deliver_header(frame).map(|h| h.op_count)
}

/// The number of operations a `Push` frame says it carries, read from its
/// header (the tag, then the length of `ops`, in every version spoken
/// here) without decoding them: a relay's rate limit charges a push by it
/// before the room decodes the frame once. `None` for any other frame or
/// a truncated header. The count is not checked against the operations;
/// decoding refuses a push whose operations do not match it, so a frame
/// charged by a false count never reaches the state.
pub fn push_op_count(frame: &[u8]) -> Option<u64> {
    if peek_kind(frame)? != MessageKind::Push {
        return None;
    }
    let (_tag, rest) = read_varint(frame.get(1..)?)?;
    let (op_count, _) = read_varint(rest)?;
    Some(op_count)
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
