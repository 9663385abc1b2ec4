//! Replica identities and stamps: the total order every merge decision uses.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;

/// Identifies one replica. The host picks it at random once and keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub u64);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for ReplicaId {
    type Err = core::num::ParseIntError;

    /// Parses the 16-digit hexadecimal form that `Display` prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(ReplicaId)
    }
}

/// The stamp of one change: its clock reading, then its replica to break ties.
///
/// Field order matters: the derived `Ord` compares `hlc` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When the change was made.
    pub hlc: Hlc,
    /// Who made it.
    pub replica: ReplicaId,
}

impl Stamp {
    /// Builds a stamp.
    pub const fn new(hlc: Hlc, replica: ReplicaId) -> Stamp {
        Stamp { hlc, replica }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_on_hlc_break_on_replica() {
        let hlc = Hlc::new(5, 0).unwrap();
        assert!(Stamp::new(hlc, ReplicaId(1)) < Stamp::new(hlc, ReplicaId(2)));
        assert!(Stamp::new(Hlc::new(6, 0).unwrap(), ReplicaId(1)) > Stamp::new(hlc, ReplicaId(2)));
    }

    #[test]
    fn replica_id_hex_round_trip() {
        let id = ReplicaId(0xdead_beef);
        assert_eq!(id.to_string().parse::<ReplicaId>().unwrap(), id);
    }
}
