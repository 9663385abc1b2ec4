//! Reading the claims of a relay access token, without verifying it.
//!
//! A token is `base64url(postcard(claims)) "." base64url(signature)`
//! (no padding); docs/PROTOCOL.md specifies it. Only the relay verifies the
//! signature. A client reads the claims to know when its token expires, so
//! it can ask the app for a new one in time.

use serde::Deserialize;

/// What a token says. Unverified: use it for scheduling, never for trust.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenClaims {
    /// The one room the token opens.
    pub room: String,
    /// Whether it grants only reading.
    pub read_only: bool,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The one replica allowed to use it, if the token names one.
    pub replica: Option<u64>,
}

#[derive(Deserialize)]
enum Rights {
    Read,
    ReadWrite,
}

#[derive(Deserialize)]
struct Claims {
    room: String,
    rights: Rights,
    expires_at: u64,
    replica: Option<u64>,
}

impl TokenClaims {
    /// The claims of `token`, or `None` if it is not of the token format.
    pub fn read(token: &str) -> Option<TokenClaims> {
        let (claims, signature) = token.split_once('.')?;
        if signature.is_empty() || signature.contains('.') {
            return None;
        }
        let bytes = decode_base64url(claims)?;
        let claims: Claims = postcard::from_bytes(&bytes).ok()?;
        Some(TokenClaims {
            room: claims.room,
            read_only: matches!(claims.rights, Rights::Read),
            expires_at: claims.expires_at,
            replica: claims.replica,
        })
    }
}

/// Unpadded base64url, as tokens use it.
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    if text.contains(['+', '/', '=']) {
        return None;
    }
    let mut standard: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while standard.len() % 4 != 0 {
        standard.push('=');
    }
    crate::base64::decode(&standard)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token minted by `concord-relay token --room demo --rights rw`
    /// (claims: room "demo", read-write, expiry 1767225600, no replica).
    #[test]
    fn reads_the_claims_of_a_relay_token() {
        // postcard: len 4 "demo", variant 1, varint 1767225600, None.
        let claims = [
            4, b'd', b'e', b'm', b'o', 1, 0x80, 0xf2, 0xd6, 0xca, 0x06, 0,
        ];
        let text = crate::base64::encode(&claims)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        let token = format!("{text}.c2ln");
        let read = TokenClaims::read(&token).expect("claims");
        assert_eq!(read.room, "demo");
        assert!(!read.read_only);
        assert_eq!(read.expires_at, 1_767_225_600);
        assert_eq!(read.replica, None);
    }

    #[test]
    fn refuses_what_is_not_a_token() {
        for text in ["", "abc", "abc.", ".sig", "a.b.c", "!!!.sig", "AAAA.sig"] {
            assert_eq!(TokenClaims::read(text), None, "{text:?}");
        }
    }
}
