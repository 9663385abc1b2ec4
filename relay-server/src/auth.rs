//! Access tokens: Ed25519-signed claims naming one room, the rights granted
//! in it, an expiry and optionally the one replica allowed to use it.
//!
//! A token is `base64url(postcard(Claims)) "." base64url(signature)`, no
//! padding. The signature covers [`SIGNING_CONTEXT`] followed by the claims
//! bytes, so a signature made for anything else never verifies as a token.
//! The relay only needs the public key(s); whoever issues tokens (the app's
//! server, or `concord-relay token` in development) holds the secret key.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sync_core::ReplicaId;
use sync_core::protocol::ErrorCode;

/// Prefix of every signed message, for domain separation.
pub(crate) const SIGNING_CONTEXT: &[u8] = b"concord-relay token v1\0";

/// Longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

/// File name of the secret key in a key directory.
pub(crate) const SECRET_KEY_FILE: &str = "concord-relay.key";
/// File name of the public key in a key directory.
pub(crate) const PUBLIC_KEY_FILE: &str = "concord-relay.pub";

/// What a token lets its holder do in its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rights {
    /// Receive the room's operations.
    Read,
    /// Receive and push operations.
    ReadWrite,
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The one room the token opens.
    pub(crate) room: String,
    /// What the holder may do there.
    pub(crate) rights: Rights,
    /// Expiry, Unix seconds.
    pub(crate) expires_at: u64,
    /// If set, only this replica may use the token.
    pub(crate) replica: Option<u64>,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No token was presented.
    #[error("no token presented")]
    Missing,
    /// The token is not of the token format.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// No configured key verifies the signature.
    #[error("token signature does not verify with the relay's keys")]
    BadSignature,
    /// The token expired.
    #[error("token expired at {expires_at} (Unix seconds); ask for a new one")]
    Expired {
        /// When it expired.
        expires_at: u64,
    },
    /// The token names another room.
    #[error("token is for room {token_room:?}, not {room:?}")]
    WrongRoom {
        /// The room the token names.
        token_room: String,
        /// The room asked for.
        room: String,
    },
    /// The token names another replica.
    #[error("token is for replica {token_replica}, not {replica}")]
    WrongReplica {
        /// The replica the token names.
        token_replica: ReplicaId,
        /// The replica that presented it.
        replica: ReplicaId,
    },
}

impl AuthError {
    /// The protocol error code sent to the client.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::BadSignature
            | AuthError::Expired { .. } => ErrorCode::Unauthorized,
            AuthError::WrongRoom { .. } | AuthError::WrongReplica { .. } => ErrorCode::Forbidden,
        }
    }

    /// A short label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::WrongRoom { .. } => "wrong_room",
            AuthError::WrongReplica { .. } => "wrong_replica",
        }
    }
}

/// Signs claims into a token.
pub(crate) fn mint(key: &SigningKey, claims: &Claims) -> Result<String, postcard::Error> {
    let body = postcard::to_allocvec(claims)?;
    let signature = key.sign(&signed_message(&body));
    Ok(format!(
        "{}.{}",
        B64.encode(&body),
        B64.encode(signature.to_bytes())
    ))
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(body);
    message
}

/// Checks tokens against the configured public keys.
#[derive(Clone, Debug)]
pub(crate) struct Verifier {
    keys: Vec<VerifyingKey>,
    allow_anonymous: bool,
}

/// What a verified session may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Pushes are refused.
    pub(crate) read_only: bool,
    /// No valid token: admitted because anonymous access is on.
    pub(crate) anonymous: bool,
}

impl Verifier {
    /// A verifier for these keys.
    pub(crate) fn new(keys: Vec<VerifyingKey>, allow_anonymous: bool) -> Verifier {
        Verifier {
            keys,
            allow_anonymous,
        }
    }

    /// Checks `token` for `room` and `replica` at Unix time `now_secs`.
    ///
    /// With anonymous access on, a session without a valid token is let in
    /// with read-write rights (a valid token still counts as presented).
    pub(crate) fn verify(
        &self,
        token: &[u8],
        room: &str,
        replica: ReplicaId,
        now_secs: u64,
    ) -> Result<Grant, AuthError> {
        match self.check(token, room, replica, now_secs) {
            Ok(claims) => Ok(Grant {
                read_only: claims.rights == Rights::Read,
                anonymous: false,
            }),
            Err(_) if self.allow_anonymous => Ok(Grant {
                read_only: false,
                anonymous: true,
            }),
            Err(e) => Err(e),
        }
    }

    fn check(
        &self,
        token: &[u8],
        room: &str,
        replica: ReplicaId,
        now_secs: u64,
    ) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed("longer than 4096 bytes"));
        }
        let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed("not text"))?;
        let (body, signature) = token
            .trim()
            .split_once('.')
            .ok_or(AuthError::Malformed("no `.` between claims and signature"))?;
        let body = B64
            .decode(body)
            .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let signature = Signature::from_slice(&signature)
            .map_err(|_| AuthError::Malformed("signature is not 64 bytes"))?;
        let message = signed_message(&body);
        if !self
            .keys
            .iter()
            .any(|key| key.verify(&message, &signature).is_ok())
        {
            return Err(AuthError::BadSignature);
        }
        let claims: Claims = postcard::from_bytes(&body)
            .map_err(|_| AuthError::Malformed("claims do not decode"))?;
        if claims.expires_at <= now_secs {
            return Err(AuthError::Expired {
                expires_at: claims.expires_at,
            });
        }
        if claims.room != room {
            return Err(AuthError::WrongRoom {
                token_room: claims.room,
                room: room.to_owned(),
            });
        }
        if let Some(token_replica) = claims.replica.map(ReplicaId) {
            if token_replica != replica {
                return Err(AuthError::WrongReplica {
                    token_replica,
                    replica,
                });
            }
        }
        Ok(claims)
    }
}

/// A key file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The contents are not a key.
    #[error("{what} is not a base64url Ed25519 key of 32 bytes")]
    Invalid {
        /// Which key.
        what: String,
    },
    /// No randomness was available.
    #[error("cannot draw random bytes for a key: {0}")]
    Random(String),
    /// Refusing to overwrite an existing key.
    #[error("{0} already exists; pass --force to replace it (tokens signed by it stop working)")]
    Exists(PathBuf),
}

/// Parses a base64url public key.
pub(crate) fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let invalid = || KeyError::Invalid {
        what: format!("public key {:?}", text.trim()),
    };
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(invalid)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid())
}

/// Reads a secret key file (base64url of the 32-byte seed).
pub(crate) fn read_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let seed: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Invalid {
            what: format!("secret key file {}", path.display()),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a public key file.
pub(crate) fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_public_key(&text)
}

/// A new random key.
pub(crate) fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The base64url form of a public key.
pub(crate) fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Writes a new key pair into `dir` (secret key readable by the owner only).
/// Returns the paths written.
pub(crate) fn write_key_pair(
    dir: &Path,
    key: &SigningKey,
    force: bool,
) -> Result<(PathBuf, PathBuf), KeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    if !force && secret.exists() {
        return Err(KeyError::Exists(secret));
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&secret).map_err(io(&secret))?;
    writeln!(file, "{}", B64.encode(key.to_bytes())).map_err(io(&secret))?;
    file.sync_all().map_err(io(&secret))?;
    fs::write(
        &public,
        format!("{}\n", public_key_text(&key.verifying_key())),
    )
    .map_err(io(&public))?;
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(room: &str, rights: Rights, expires_at: u64, replica: Option<u64>) -> Claims {
        Claims {
            room: room.into(),
            rights,
            expires_at,
            replica,
        }
    }

    #[test]
    fn verifies_what_it_signs_and_nothing_else() {
        let key = generate().unwrap();
        let other = generate().unwrap();
        let verifier = Verifier::new(vec![key.verifying_key()], false);
        let token = mint(&key, &claims("r", Rights::ReadWrite, 100, None)).unwrap();
        let grant = verifier.verify(token.as_bytes(), "r", ReplicaId(1), 99);
        assert_eq!(
            grant,
            Ok(Grant {
                read_only: false,
                anonymous: false
            })
        );
        let read = mint(&key, &claims("r", Rights::Read, 100, Some(7))).unwrap();
        assert!(
            verifier
                .verify(read.as_bytes(), "r", ReplicaId(7), 0)
                .unwrap()
                .read_only
        );
        let cases = [
            (
                token.clone(),
                "r",
                1,
                100,
                AuthError::Expired { expires_at: 100 },
            ),
            (
                token.clone(),
                "s",
                1,
                0,
                AuthError::WrongRoom {
                    token_room: "r".into(),
                    room: "s".into(),
                },
            ),
            (
                read.clone(),
                "r",
                8,
                0,
                AuthError::WrongReplica {
                    token_replica: ReplicaId(7),
                    replica: ReplicaId(8),
                },
            ),
            (
                mint(&other, &claims("r", Rights::ReadWrite, 100, None)).unwrap(),
                "r",
                1,
                0,
                AuthError::BadSignature,
            ),
            (String::new(), "r", 1, 0, AuthError::Missing),
        ];
        for (token, room, replica, now, expected) in cases {
            assert_eq!(
                verifier.verify(token.as_bytes(), room, ReplicaId(replica), now),
                Err(expected)
            );
        }
    }

    #[test]
    fn tampered_tokens_fail() {
        let key = generate().unwrap();
        let verifier = Verifier::new(vec![key.verifying_key()], false);
        let token = mint(&key, &claims("r", Rights::Read, 100, None)).unwrap();
        // Claims of another token under this token's signature.
        let forged = mint(&key, &claims("r", Rights::ReadWrite, 100, None)).unwrap();
        let (body, _) = forged.split_once('.').unwrap();
        let (_, sig) = token.split_once('.').unwrap();
        let spliced = format!("{body}.{sig}");
        assert_eq!(
            verifier.verify(spliced.as_bytes(), "r", ReplicaId(1), 0),
            Err(AuthError::BadSignature)
        );
        for junk in ["x", "a.b", "....", "\u{0}.\u{1}"] {
            assert!(
                verifier
                    .verify(junk.as_bytes(), "r", ReplicaId(1), 0)
                    .is_err()
            );
        }
        assert!(verifier.verify(&[0xff; 10], "r", ReplicaId(1), 0).is_err());
    }

    #[test]
    fn anonymous_admits_without_token() {
        let verifier = Verifier::new(Vec::new(), true);
        let grant = verifier.verify(b"", "r", ReplicaId(1), 0).unwrap();
        assert!(grant.anonymous && !grant.read_only);
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        let (secret, public) = write_key_pair(dir.path(), &key, false).unwrap();
        assert_eq!(read_secret_key(&secret).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(read_public_key(&public).unwrap(), key.verifying_key());
        assert!(matches!(
            write_key_pair(dir.path(), &key, false),
            Err(KeyError::Exists(_))
        ));
    }
}
