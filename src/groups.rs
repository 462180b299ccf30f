//! Groups (`protocols/groups-v1.md`): a group is a random 128-bit id and a membership log of
//! entries signed by admins, numbered and chained, that every member holds and merges by one
//! deterministic rule.
//!
//! - [`entry`]: one entry, its bytes and signatures.
//! - [`log`]: admitting entries, the state they give, the head that compares logs.

pub mod entry;
pub mod log;

pub use entry::{Entry, Hash, Op, Reject};
pub use log::{Head, Log, State};

/// A group's id: 16 random bytes, 32 hex digits in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Text that is not a group id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a group id is 32 hex digits")]
pub struct BadGroupId;

impl std::str::FromStr for GroupId {
    type Err = BadGroupId;
    fn from_str(s: &str) -> Result<Self, BadGroupId> {
        let mut id = [0; 16];
        hex::decode_to_slice(s, &mut id).map_err(|_| BadGroupId)?;
        Ok(Self(id))
    }
}

impl serde::Serialize for GroupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GroupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
