//! Error codes carried in messages and WebSocket close codes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What went wrong, in an `Error`, `Rejected` or `Ack` message.
///
/// Encoded as its index, a `u32` varint; new codes are only ever appended.
/// A code this build does not know (sent by a newer peer) decodes as
/// [`ErrorCode::Unknown`] instead of failing the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame does not decode, or a message arrived out of turn.
    Malformed,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion,
    /// The token is missing, forged or expired.
    Unauthorized,
    /// The token does not grant this room, or not this replica id.
    Forbidden,
    /// The session's token grants read only; pushes are refused.
    ReadOnly,
    /// The operation is stamped further in the future than the relay allows;
    /// retry after `retry_after_ms`.
    ClockAhead,
    /// The operation is older than the relay's tombstone horizon and was
    /// dropped: the replica was offline longer than the relay keeps history.
    Stale,
    /// The operation breaks the data model's rules.
    InvalidOp,
    /// A push carried more operations or bytes than the batch limit.
    BatchTooLarge,
    /// The frame exceeds the size limit.
    FrameTooLarge,
    /// The session sends faster than its rate limit.
    RateLimited,
    /// The relay has too many connections (in all, or in this room).
    TooManyConnections,
    /// The session did not keep up with the room and was cut off; it may resume.
    SlowConsumer,
    /// The session was silent past the idle timeout.
    IdleTimeout,
    /// Another session of the same replica joined; this one is superseded.
    Superseded,
    /// The relay is shutting down; reconnect later.
    GoingAway,
    /// The relay failed internally; reconnect later.
    Internal,
    /// The room name is not valid (see `protocol::valid_room_name`);
    /// retrying with the same name cannot help.
    InvalidRoom,
    /// A code this build does not know, by its index: a newer peer's.
    /// An `Error` with it closes with 4000 (and the client reconnects); a
    /// `Rejected` with it means "push again later"; in `Ack.refused` the
    /// operation is refused for good all the same.
    Unknown(u32),
}

/// Every known code, in index order.
const KNOWN_ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::Malformed,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::ReadOnly,
    ErrorCode::ClockAhead,
    ErrorCode::Stale,
    ErrorCode::InvalidOp,
    ErrorCode::BatchTooLarge,
    ErrorCode::FrameTooLarge,
    ErrorCode::RateLimited,
    ErrorCode::TooManyConnections,
    ErrorCode::SlowConsumer,
    ErrorCode::IdleTimeout,
    ErrorCode::Superseded,
    ErrorCode::GoingAway,
    ErrorCode::Internal,
    ErrorCode::InvalidRoom,
];

impl ErrorCode {
    /// The code's index on the wire.
    pub fn index(self) -> u32 {
        match self {
            ErrorCode::Unknown(index) => index,
            known => KNOWN_ERROR_CODES
                .iter()
                .position(|c| *c == known)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(u32::MAX),
        }
    }

    /// The code with this index: a known one, or [`ErrorCode::Unknown`].
    pub fn from_index(index: u32) -> ErrorCode {
        usize::try_from(index)
            .ok()
            .and_then(|i| KNOWN_ERROR_CODES.get(i))
            .copied()
            .unwrap_or(ErrorCode::Unknown(index))
    }

    /// The close code that follows an `Error` message with this code.
    pub fn close_code(self) -> CloseCode {
        match self {
            ErrorCode::Malformed | ErrorCode::InvalidOp | ErrorCode::BatchTooLarge => {
                CloseCode::ProtocolError
            }
            ErrorCode::UnsupportedVersion => CloseCode::UnsupportedVersion,
            ErrorCode::Unauthorized => CloseCode::Unauthorized,
            ErrorCode::Forbidden | ErrorCode::ReadOnly => CloseCode::Forbidden,
            ErrorCode::ClockAhead | ErrorCode::Stale => CloseCode::ProtocolError,
            ErrorCode::FrameTooLarge => CloseCode::FrameTooLarge,
            ErrorCode::RateLimited => CloseCode::RateLimited,
            ErrorCode::TooManyConnections => CloseCode::TooManyConnections,
            ErrorCode::SlowConsumer => CloseCode::SlowConsumer,
            ErrorCode::IdleTimeout => CloseCode::IdleTimeout,
            ErrorCode::Superseded => CloseCode::Superseded,
            ErrorCode::GoingAway => CloseCode::GoingAway,
            ErrorCode::Internal => CloseCode::Internal,
            ErrorCode::InvalidRoom => CloseCode::InvalidRoom,
            ErrorCode::Unknown(_) => CloseCode::ProtocolError,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Postcard writes a `u32` exactly as it writes an enum's variant
        // index: the encoding of the known codes is unchanged.
        s.serialize_u32(self.index())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        u32::deserialize(d).map(ErrorCode::from_index)
    }
}

/// WebSocket close codes the relay and clients use.
///
/// A number this build does not know is [`CloseCode::Other`]: a newer
/// relay's code, or one from the WebSocket layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: done.
    Normal,
    /// 1001: the relay is shutting down; reconnect.
    GoingAway,
    /// 4000: the peer broke the protocol.
    ProtocolError,
    /// 4001: unsupported protocol version; retrying will not help.
    UnsupportedVersion,
    /// 4002: bad token; retrying will not help until the token changes.
    Unauthorized,
    /// 4003: the token does not allow this.
    Forbidden,
    /// 4004: no hello in time.
    HandshakeTimeout,
    /// 4005: too slow to keep up; resume from the cursor.
    SlowConsumer,
    /// 4006: silent for too long.
    IdleTimeout,
    /// 4007: a frame over the size limit.
    FrameTooLarge,
    /// 4008: over the rate limit.
    RateLimited,
    /// 4009: too many connections.
    TooManyConnections,
    /// 4010: replaced by a newer session of the same replica.
    Superseded,
    /// 4011: internal failure.
    Internal,
    /// 4012: the room name is not valid; retrying will not help.
    InvalidRoom,
    /// Any other number; the client reconnects, as after 1001.
    Other(u16),
}

impl CloseCode {
    /// The numeric WebSocket close code.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 4000,
            CloseCode::UnsupportedVersion => 4001,
            CloseCode::Unauthorized => 4002,
            CloseCode::Forbidden => 4003,
            CloseCode::HandshakeTimeout => 4004,
            CloseCode::SlowConsumer => 4005,
            CloseCode::IdleTimeout => 4006,
            CloseCode::FrameTooLarge => 4007,
            CloseCode::RateLimited => 4008,
            CloseCode::TooManyConnections => 4009,
            CloseCode::Superseded => 4010,
            CloseCode::Internal => 4011,
            CloseCode::InvalidRoom => 4012,
            CloseCode::Other(code) => code,
        }
    }

    /// The close code for a number: one of ours, or [`CloseCode::Other`]
    /// (never for a number one of ours has).
    pub fn from_u16(code: u16) -> CloseCode {
        ALL_CLOSE_CODES
            .iter()
            .copied()
            .find(|c| c.as_u16() == code)
            .unwrap_or(CloseCode::Other(code))
    }

    /// Whether this is one of the codes this build knows.
    pub fn is_known(self) -> bool {
        !matches!(self, CloseCode::Other(_))
    }

    /// Whether a client should reconnect after this close. Only codes that
    /// mean "this will fail the same way again" stop reconnection.
    ///
    /// `Superseded` reconnects: a slow handshake of an abandoned connection
    /// can overtake the current one. Two hosts that really share a replica
    /// id take turns at a backoff that keeps growing, because a connection
    /// cut short never resets it.
    pub fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::UnsupportedVersion
                | CloseCode::Unauthorized
                | CloseCode::Forbidden
                | CloseCode::InvalidRoom
        )
    }
}

const ALL_CLOSE_CODES: &[CloseCode] = &[
    CloseCode::Normal,
    CloseCode::GoingAway,
    CloseCode::ProtocolError,
    CloseCode::UnsupportedVersion,
    CloseCode::Unauthorized,
    CloseCode::Forbidden,
    CloseCode::HandshakeTimeout,
    CloseCode::SlowConsumer,
    CloseCode::IdleTimeout,
    CloseCode::FrameTooLarge,
    CloseCode::RateLimited,
    CloseCode::TooManyConnections,
    CloseCode::Superseded,
    CloseCode::Internal,
    CloseCode::InvalidRoom,
];
