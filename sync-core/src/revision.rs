//! Document revisions for optimistic concurrency.

use core::fmt;
use core::hash::Hasher;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::stamp::{ReplicaId, Stamp};

/// A document's revision: its highest stamp plus a digest of the stamps of
/// the fields it shows.
///
/// The highest stamp alone would miss a concurrent write that arrives late
/// with an older stamp but still changes a field nobody newer wrote; the
/// digest catches it. Revisions are the same on every replica holding the
/// same writes, so they can be passed around and compared anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Revision {
    /// The stamp of the latest write to the document.
    pub stamp: Stamp,
    /// Digest over the stamps of every field write the document holds.
    pub digest: u64,
}

impl Revision {
    /// Length of a revision's text: three groups of 16 hex digits joined
    /// by `-`.
    pub const TEXT_LEN: usize = 50;

    /// The revision's text, `<hlc>-<replica>-<digest>` in lowercase hex, as
    /// ASCII bytes: what `Display` prints, without `fmt`'s machinery (a
    /// binding that hands out a revision per write spends more on that
    /// machinery than on encoding the write).
    pub fn to_text(&self) -> [u8; Revision::TEXT_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let groups = [self.stamp.hlc.as_u64(), self.stamp.replica.0, self.digest];
        let mut text = [b'-'; Revision::TEXT_LEN];
        for (group, at) in groups.into_iter().zip([0, 17, 34]) {
            for (i, digit) in text[at..at + 16].iter_mut().enumerate() {
                *digit = DIGITS[(group >> (60 - 4 * i)) as usize & 15];
            }
        }
        text
    }
}

impl fmt::Display for Revision {
    /// `<hlc>-<replica>-<digest>`, each 16 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        f.write_str(core::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// A revision string did not have the form `Revision`'s `Display` prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a revision is three groups of 16 hex digits joined by '-', got '{0}'")]
pub struct ParseRevisionError(String);

impl FromStr for Revision {
    type Err = ParseRevisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseRevisionError(s.to_owned());
        let mut parts = s.split('-');
        let mut next = || {
            let part = parts
                .next()
                .filter(|p| p.len() == 16 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(bad)?;
            u64::from_str_radix(part, 16).map_err(|_| bad())
        };
        let (hlc, replica, digest) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Revision {
            stamp: Stamp::new(Hlc::from_u64(hlc), ReplicaId(replica)),
            digest,
        })
    }
}

// A document's digest is a wrapping sum of one term per visible field, so
// fields can be visited in any order, and the state can keep the sum up to
// date by subtracting a replaced field's term and adding the new one.

/// The hash of a field name that goes into [`field_term`]; the state caches
/// it per interned name.
pub(crate) fn name_hash(name: &str) -> u64 {
    fnv1a(name.as_bytes())
}

/// One visible field's contribution to its document's digest sum.
pub(crate) fn field_term(name_hash: u64, stamp: Stamp) -> u64 {
    mix(mix(name_hash ^ stamp.hlc.as_u64()) ^ stamp.replica.0)
}

/// The revision of a document last written at `written` whose visible
/// fields' terms add up to `sum` (wrapping).
pub(crate) fn revision_from_sum(written: Stamp, sum: u64) -> Revision {
    let digest = mix(sum ^ mix(written.hlc.as_u64() ^ mix(written.replica.0)));
    Revision {
        stamp: written,
        digest,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_OFFSET, bytes)
}

/// FNV-1a's starting state.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash whose state is `hash` over more bytes.
pub(crate) fn fnv1a_extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The splitmix64 finaliser: a cheap bijective mix with good avalanche.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes, finished with the `revision` mixer so that every
/// output bit depends on every input byte (the hash table takes its bucket
/// from the low bits and a tag from the high ones). About a third of the
/// cost of std's SipHash for short ids.
pub(crate) struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher(FNV_OFFSET)
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_extend(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written out by hand: the digits' order and padding, and the
    /// groups' order (clock reading, replica, digest).
    #[test]
    fn text_is_three_padded_hex_groups() {
        let rev = Revision {
            stamp: Stamp::new(
                Hlc::from_u64(0x01a2_5151_e5ab_0003),
                ReplicaId(0x0000_16f4_e3dc_ba9c),
            ),
            digest: u64::MAX,
        };
        let expected = "01a25151e5ab0003-000016f4e3dcba9c-ffffffffffffffff";
        assert_eq!(rev.to_text(), expected.as_bytes());
        assert_eq!(rev.to_string(), expected);
        let zero = Revision {
            stamp: Stamp::new(Hlc::from_u64(0), ReplicaId(0)),
            digest: 0,
        };
        assert_eq!(
            zero.to_string(),
            "0000000000000000-0000000000000000-0000000000000000"
        );
    }

    #[test]
    fn display_parses_back() {
        let rev = Revision {
            stamp: Stamp::new(Hlc::new(42, 7).unwrap(), ReplicaId(9)),
            digest: 0xabc,
        };
        assert_eq!(rev.to_string().parse::<Revision>().unwrap(), rev);
        assert!("nope".parse::<Revision>().is_err());
        assert!(format!("{rev}-00").parse::<Revision>().is_err());
    }

    #[test]
    fn digest_ignores_visit_order() {
        let s = |n| Stamp::new(Hlc::new(n, 0).unwrap(), ReplicaId(1));
        let x = field_term(name_hash("x"), s(1));
        let y = field_term(name_hash("y"), s(2));
        assert_eq!(
            revision_from_sum(s(9), x.wrapping_add(y)),
            revision_from_sum(s(9), y.wrapping_add(x))
        );
        assert_ne!(revision_from_sum(s(9), x), revision_from_sum(s(9), y));
    }
}
