//! Handles people can type (`protocols/names-v1.md` §2): normalisation, and the confusable
//! skeleton under which a handle is stored in the DHT, so that look-alikes share one slot.
//!
//! A handle is normalised with NFKC and Unicode default case folding (NFKC again after folding),
//! then must be 3 to 32 characters of `a-z`, `0-9` and `-` (not first or last). `Alice`, `ALICE`
//! and `ａｌｉｃｅ` (full-width) are all `alice`; `аlice` (Cyrillic а) is refused, being outside
//! the alphabet. Inside it, look-alikes (`a1ice`, `alice`; `rnodern`, `modern`) have one
//! skeleton (UTS #39), and the DHT key is the skeleton: the first to claim one holds all of them.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 32;
/// Longest text looked at before normalising: anything longer is refused unread.
pub const MAX_INPUT_BYTES: usize = 256;

/// A normalised handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Handle(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHandle {
    #[error("a handle is {MIN_LEN} to {MAX_LEN} characters")]
    Length,
    #[error("a handle uses a-z, 0-9 and - (not first or last); `{0}` is not allowed")]
    Character(char),
}

impl Handle {
    /// Normalises what a person typed (a leading `@` is dropped).
    pub fn parse(input: &str) -> Result<Self, BadHandle> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(BadHandle::Length);
        }
        let input = input.strip_prefix('@').unwrap_or(input);
        let folded: String = caseless::default_case_fold_str(&input.nfkc().collect::<String>())
            .nfkc()
            .collect();
        let len = folded.chars().count();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(BadHandle::Length);
        }
        if let Some(c) = folded
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(BadHandle::Character(c));
        }
        if folded.starts_with('-') || folded.ends_with('-') {
            return Err(BadHandle::Character('-'));
        }
        Ok(Self(folded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTS #39 skeleton, lower-cased: equal for handles that look alike.
    pub fn skeleton(&self) -> String {
        unicode_security::skeleton(&self.0)
            .flat_map(char::to_lowercase)
            .collect()
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Handle {
    type Err = BadHandle;

    fn from_str(s: &str) -> Result<Self, BadHandle> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Handle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Result<String, BadHandle> {
        Handle::parse(s).map(|h| h.0)
    }

    #[test]
    fn case_width_and_at_sign_do_not_matter() {
        for same in ["alice", "Alice", "ALICE", "@alice", "ａｌｉｃｅ"] {
            assert_eq!(h(same).as_deref(), Ok("alice"), "{same}");
        }
        // Dotted capital I folds to i and a combining dot, which is outside the alphabet.
        assert!(h("ALİCE").is_err());
        assert_eq!(h("Straße").as_deref(), Ok("strasse"), "full case folding");
        assert_eq!(h("bob-42").as_deref(), Ok("bob-42"));
    }

    #[test]
    fn outside_the_alphabet_or_the_length_is_refused() {
        assert_eq!(h("аlice"), Err(BadHandle::Character('а')), "Cyrillic а");
        assert_eq!(h("al"), Err(BadHandle::Length));
        assert_eq!(h(&"a".repeat(33)), Err(BadHandle::Length));
        assert_eq!(h(&"a".repeat(300)), Err(BadHandle::Length));
        assert_eq!(h("-alice"), Err(BadHandle::Character('-')));
        assert_eq!(h("al ice"), Err(BadHandle::Character(' ')));
        assert_eq!(h("al.ice"), Err(BadHandle::Character('.')));
        assert_eq!(h(""), Err(BadHandle::Length));
    }

    #[test]
    fn look_alikes_share_a_skeleton() {
        let sk = |s: &str| Handle::parse(s).unwrap().skeleton();
        assert_eq!(sk("alice"), sk("a1ice"));
        assert_eq!(sk("alice"), sk("ALICE"));
        assert_eq!(sk("modern"), sk("rnodern"));
        assert_eq!(sk("google"), sk("g00gle"));
        assert_ne!(sk("alice"), sk("alicia"));
        assert_eq!(
            unicode_security::UNICODE_VERSION,
            (18, 0, 0),
            "another confusables table changes DHT keys: a new names protocol version"
        );
    }
}
