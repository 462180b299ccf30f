//! Light clients as DATA_VIA names them (`protocols/data-v1.md` §4.3, `assist.md` §2): a client's
//! id, and the pair of ids a message carries. In JSON (the store, the control API, the gateway)
//! an id is 16 hex digits; parsed once where it enters, bytes from then on.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A light client's id: the first 8 bytes of the SHA-256 of its assist token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub [u8; 8]);

/// Text that is not a client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a client id is 16 hex digits")]
pub struct BadClientId;

impl FromStr for ClientId {
    type Err = BadClientId;

    /// 16 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, BadClientId> {
        let mut id = [0; 8];
        hex::decode_to_slice(s, &mut id).map_err(|_| BadClientId)?;
        Ok(Self(id))
    }
}

/// 16 lower-case hex digits.
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

impl Serialize for ClientId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The light clients a message names (DATA_VIA): the sender's client that wrote it, the
/// receiver's client it is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Via {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_client: Option<ClientId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_client: Option<ClientId>,
}

impl Via {
    /// Names no client: sent as plain DATA.
    pub fn is_none(&self) -> bool {
        self.from_client.is_none() && self.to_client.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_hex_digits_either_case_and_print_in_lower_case() {
        let id: ClientId = "00C1ab0000000000".parse().unwrap();
        assert_eq!(id.0, [0, 0xc1, 0xab, 0, 0, 0, 0, 0]);
        assert_eq!(id.to_string(), "00c1ab0000000000");
        for bad in [
            "",
            "00c1",
            "00c1ab00000000000",
            "zzc1ab0000000000",
            "00c1ab000000000",
        ] {
            assert_eq!(bad.parse::<ClientId>(), Err(BadClientId), "{bad:?}");
        }
        let via: Via = serde_json::from_str(r#"{"to_client":"00C1AB0000000000"}"#).unwrap();
        assert_eq!(via.to_client, Some(id));
        assert_eq!(
            serde_json::to_string(&via).unwrap(),
            r#"{"to_client":"00c1ab0000000000"}"#
        );
        assert!(serde_json::from_str::<Via>(r#"{"to_client":"nope"}"#).is_err());
    }
}
