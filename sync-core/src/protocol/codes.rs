//! Error codes carried in messages and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// What went wrong, in an `Error` or `Rejected` message.
///
/// Encoded as its variant index; new codes are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl ErrorCode {
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
        }
    }
}

/// WebSocket close codes the relay and clients use.
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
        }
    }

    /// The close code for a number, if it is one of ours.
    pub fn from_u16(code: u16) -> Option<CloseCode> {
        ALL_CLOSE_CODES.iter().copied().find(|c| c.as_u16() == code)
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
            CloseCode::UnsupportedVersion | CloseCode::Unauthorized | CloseCode::Forbidden
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
];
