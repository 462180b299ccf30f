//! Bearer tokens of the assist API (`protocols/assist.md` §2). Tokens are 32 random bytes, hex;
//! only their SHA-256 is kept: in the node's database for tokens issued on it (`commucat token
//! issue`), in `assist.token_hashes` for configured ones. A token's client id is the first 8 bytes
//! of its hash, hex.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::ClientId;

/// Issued tokens kept at most; expired ones are removed first.
pub const MAX_ISSUED_TOKENS: usize = 100_000;
/// Longest lifetime of an issued token: a year.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{MAX_ISSUED_TOKENS} tokens are issued already; revoke some")]
    Full,
    #[error("ttl_secs must be 1 … {MAX_TTL_SECS}")]
    BadTtl,
}

/// What is stored for an issued token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The client id the token authenticates as.
    pub id: ClientId,
    pub created_at: u64,
    pub expires_at: u64,
}

/// A new token: shown once, never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Revocations buffered per listener (assist mode's signaling hub and gateway); one that falls
/// further behind misses some, and a missed one still fails at the next token check.
pub const REVOCATION_BUFFER: usize = 64;

/// The tokens the assist API accepts.
pub struct Tokens {
    tree: sled::Tree,
    committer: crate::store::Committer,
    configured: Vec<[u8; 32]>,
    revoked: tokio::sync::broadcast::Sender<ClientId>,
}

/// SHA-256 of a token, hex (what `assist.token_hashes` holds).
pub fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn client_id(hash: &[u8]) -> ClientId {
    let mut id = [0; 8];
    id.copy_from_slice(&hash[..8]);
    ClientId(id)
}

impl Tokens {
    /// `configured`: SHA-256 hex digests (checked by the config).
    pub fn new(
        tree: sled::Tree,
        committer: crate::store::Committer,
        configured: &[String],
    ) -> Self {
        let configured = configured
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        Self {
            tree,
            committer,
            configured,
            revoked: tokio::sync::broadcast::channel(REVOCATION_BUFFER).0,
        }
    }

    /// The client ids of tokens revoked from now on: what is open under them must close.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<ClientId> {
        self.revoked.subscribe()
    }

    /// Makes a token valid for `ttl_secs`.
    pub fn issue(&self, ttl_secs: u64) -> Result<Issued, Error> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(Error::BadTtl);
        }
        let now = crate::time::unix_secs();
        if self.tree.len() >= MAX_ISSUED_TOKENS {
            self.remove_expired(now)?;
            if self.tree.len() >= MAX_ISSUED_TOKENS {
                return Err(Error::Full);
            }
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let hash = Sha256::digest(token.as_bytes());
        let info = TokenInfo {
            id: client_id(&hash),
            created_at: now,
            expires_at: now + ttl_secs,
        };
        self.tree.insert(
            hash.as_slice(),
            serde_json::to_vec(&info).expect("plain values"),
        )?;
        self.committer.commit_blocking()?;
        Ok(Issued { token, info })
    }

    /// Revokes a token given as itself or by its client id; returns whether one was revoked.
    /// Listeners of [`Self::revocations`] hear of it.
    pub fn revoke(&self, token_or_id: &str) -> Result<bool, Error> {
        let by_hash = Sha256::digest(token_or_id.as_bytes());
        let mut gone = Vec::new();
        if self.tree.remove(by_hash.as_slice())?.is_some() {
            gone.push(client_id(&by_hash));
        }
        if let (true, Ok(id)) = (gone.is_empty(), token_or_id.parse::<ClientId>()) {
            for entry in self.tree.iter() {
                let (key, value) = entry?;
                if serde_json::from_slice::<TokenInfo>(&value).is_ok_and(|i| i.id == id) {
                    self.tree.remove(key)?;
                    gone.push(id);
                }
            }
        }
        self.committer.commit_blocking()?;
        for id in &gone {
            let _ = self.revoked.send(*id);
        }
        Ok(!gone.is_empty())
    }

    /// Issued tokens that have not expired.
    pub fn list(&self) -> Result<Vec<TokenInfo>, Error> {
        let now = crate::time::unix_secs();
        let mut out = Vec::new();
        for entry in self.tree.iter() {
            let (_, value) = entry?;
            if let Ok(info) = serde_json::from_slice::<TokenInfo>(&value)
                && info.expires_at > now
            {
                out.push(info);
            }
        }
        out.sort_by_key(|i| i.created_at);
        Ok(out)
    }

    /// The client id `token` authenticates as, if it is valid now.
    pub fn check(&self, token: &str) -> Option<ClientId> {
        let hash = Sha256::digest(token.as_bytes());
        // Configured digests are compared in constant time; issued ones are looked up by digest,
        // which leaks nothing about the token.
        if let Some(h) = self
            .configured
            .iter()
            .find(|h| bool::from(h.ct_eq(hash.as_slice())))
        {
            return Some(client_id(h));
        }
        let value = self.tree.get(hash.as_slice()).ok()??;
        let info: TokenInfo = serde_json::from_slice(&value).ok()?;
        (info.expires_at > crate::time::unix_secs()).then_some(info.id)
    }

    fn remove_expired(&self, now: u64) -> Result<(), Error> {
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            if serde_json::from_slice::<TokenInfo>(&value).map_or(true, |i| i.expires_at <= now) {
                self.tree.remove(key)?;
            }
        }
        Ok(())
    }
}

impl From<Error> for crate::http::Problem {
    fn from(e: Error) -> Self {
        use axum::http::StatusCode;
        let status = match e {
            Error::BadTtl => StatusCode::BAD_REQUEST,
            Error::Full => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_configured_revoked_and_expired_tokens() {
        let store = crate::store::Store::temporary().unwrap();
        let configured = "a configured token";
        let tokens = Tokens::new(
            store.assist_tokens().unwrap(),
            store.committer(),
            &[hash_hex(configured)],
        );
        assert_eq!(
            tokens.check(configured).map(|id| id.to_string()),
            Some(hash_hex(configured)[..16].to_owned())
        );
        assert_eq!(tokens.check("something else"), None);

        let a = tokens.issue(60).unwrap();
        let b = tokens.issue(60).unwrap();
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, b.token);
        assert_eq!(tokens.check(&a.token), Some(a.info.id));
        assert_eq!(tokens.list().unwrap().len(), 2);

        assert!(tokens.revoke(&a.info.id.to_string()).unwrap(), "by id");
        assert_eq!(tokens.check(&a.token), None);
        assert!(tokens.revoke(&b.token).unwrap(), "by token");
        assert_eq!(tokens.check(&b.token), None);
        assert!(!tokens.revoke(&b.token).unwrap(), "already gone");

        assert!(matches!(tokens.issue(0), Err(Error::BadTtl)));
        // An expired entry is refused.
        let expired = TokenInfo {
            id: "0011223344556677".parse().unwrap(),
            created_at: 1,
            expires_at: 2,
        };
        let t = "expired token";
        tokens
            .tree
            .insert(
                Sha256::digest(t.as_bytes()).as_slice(),
                serde_json::to_vec(&expired).unwrap(),
            )
            .unwrap();
        assert_eq!(tokens.check(t), None);
    }
}
