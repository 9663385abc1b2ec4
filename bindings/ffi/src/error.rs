//! The errors foreign callers see.

/// Why a call failed. One variant per kind of failure, so foreign code can
/// catch what it handles (`ConcordException.Conflict` in Kotlin,
/// `ConcordError.Conflict` in Swift and Python); the message says the cause.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ConcordError {
    /// A `put_if` found the document at another revision: read it again and retry.
    #[error("{0}")]
    Conflict(String),
    /// The write breaks the data model's rules (names, sizes, nesting).
    #[error("{0}")]
    InvalidWrite(String),
    /// The local store failed (locked by another process, full, corrupt, IO).
    #[error("{0}")]
    Store(String),
    /// The stored database cannot be loaded, or the database cannot start.
    #[error("{0}")]
    Load(String),
    /// A value cannot be stored or read as asked.
    #[error("{0}")]
    Encode(String),
    /// The relay refused local writes for good.
    #[error("{0}")]
    Rejected(String),
    /// Syncing stopped and will not resume by itself (token refused,
    /// another protocol version): fix the cause, then connect again.
    #[error("{0}")]
    Offline(String),
    /// The token only allows reading.
    #[error("{0}")]
    ReadOnly(String),
    /// The database was opened without a relay.
    #[error("{0}")]
    NoRelay(String),
    /// The database was closed.
    #[error("{0}")]
    Closed(String),
    /// An argument is malformed (for example a revision string).
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<sync_ffi::Error> for ConcordError {
    fn from(error: sync_ffi::Error) -> ConcordError {
        use sync_ffi::Error as E;
        let message = error.to_string();
        match error {
            E::Conflict { .. } => ConcordError::Conflict(message),
            E::InvalidWrite(_) => ConcordError::InvalidWrite(message),
            E::Store(_) => ConcordError::Store(message),
            E::Load(_) => ConcordError::Load(message),
            E::Decode { .. } | E::Encode(_) => ConcordError::Encode(message),
            E::Rejected { .. } => ConcordError::Rejected(message),
            E::Offline { .. } => ConcordError::Offline(message),
            E::ReadOnly => ConcordError::ReadOnly(message),
            E::NoRelay => ConcordError::NoRelay(message),
            E::Closed => ConcordError::Closed(message),
            // `Error` is non-exhaustive: a kind added later still crosses,
            // with its message, rather than failing to compile or panic.
            _ => ConcordError::Load(message),
        }
    }
}

/// Why a [`crate::TokenProvider`] could not hand out a token. The database
/// stays offline with this message in its status, and asks again later.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TokenError {
    /// No token now (the backend is unreachable, the user signed out).
    #[error("no token: {reason}")]
    Unavailable {
        /// Why, for the status display.
        reason: String,
    },
}

/// A provider that threw something other than a `TokenError` (a Kotlin
/// `RuntimeException`, a Python `ValueError`) arrives as this.
impl From<uniffi::UnexpectedUniFFICallbackError> for TokenError {
    fn from(error: uniffi::UnexpectedUniFFICallbackError) -> TokenError {
        TokenError::Unavailable {
            reason: format!("the token provider failed: {}", error.reason),
        }
    }
}
