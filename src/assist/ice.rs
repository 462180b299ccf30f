//! ICE credentials handed out by `/api/p2p/assist` (`protocols/assist.md` §4.3) and remembered
//! for the STUN responder's connectivity checks, the responder's host candidate, and coturn
//! TURN REST credentials.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::TurnServer;

/// ICE characters (RFC 8445 §5.3: ALPHA / DIGIT / "+" / "/").
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub const UFRAG_LEN: usize = 16;
pub const PASSWORD_LEN: usize = 64;

fn ice_string(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ICE_CHARS[rng.random_range(0..ICE_CHARS.len())] as char)
        .collect()
}

/// Issued ICE credentials, newest last; bounded, the oldest are forgotten first.
pub struct Credentials {
    ttl: Duration,
    max: usize,
    inner: Mutex<Issued>,
}

#[derive(Default)]
struct Issued {
    by_ufrag: HashMap<String, (String, Instant)>,
    order: VecDeque<String>,
}

impl Credentials {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            inner: Mutex::new(Issued::default()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh `(ufrag, password)` from the CSPRNG, valid for the TTL.
    pub fn issue(&self) -> (String, String) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Issued { by_ufrag, order } = &mut *inner;
        while let Some(oldest) = order.front() {
            let expired = by_ufrag.get(oldest).is_none_or(|(_, t)| *t <= now);
            if !expired && by_ufrag.len() < self.max {
                break;
            }
            if let Some(o) = order.pop_front() {
                by_ufrag.remove(&o);
            }
        }
        loop {
            let ufrag = ice_string(UFRAG_LEN);
            if by_ufrag.contains_key(&ufrag) {
                continue;
            }
            let password = ice_string(PASSWORD_LEN);
            by_ufrag.insert(ufrag.clone(), (password.clone(), now + self.ttl));
            order.push_back(ufrag.clone());
            return (ufrag, password);
        }
    }

    /// The password of an issued, unexpired ufrag.
    pub fn password(&self, ufrag: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_ufrag
            .get(ufrag)
            .filter(|(_, t)| *t > Instant::now())
            .map(|(p, _)| p.clone())
    }
}

/// An ICE-lite host candidate (`ice.lite_candidates[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    pub component: u8,
    pub protocol: String,
    pub foundation: String,
    pub priority: u32,
    pub ip: IpAddr,
    pub port: u16,
    #[serde(rename = "typ")]
    pub kind: String,
}

/// RFC 8445 §5.1.2.1 priority of a host candidate: type preference 126, local preference 65535,
/// component 1.
pub const HOST_PRIORITY: u32 = (126 << 24) | (65535 << 8) | (256 - 1);

/// The host candidate at `addr`; the foundation is the first 4 bytes of SHA-256 over the candidate
/// type, IP and protocol (RFC 8445 §5.1.1.3: same for candidates sharing them).
pub fn host_candidate(addr: SocketAddr) -> Candidate {
    let digest = Sha256::digest(format!("host|{}|udp", addr.ip()).as_bytes());
    let foundation = hex::encode(&digest[..4]);
    Candidate {
        candidate: format!(
            "candidate:{foundation} 1 udp {HOST_PRIORITY} {} {} typ host generation 0",
            addr.ip(),
            addr.port()
        ),
        component: 1,
        protocol: "udp".into(),
        foundation,
        priority: HOST_PRIORITY,
        ip: addr.ip(),
        port: addr.port(),
        kind: "host".into(),
    }
}

/// An `ice.servers[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    pub ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// coturn TURN REST credentials (`use-auth-secret`): username `<expiry-unix>:<user>`, credential
/// base64(HMAC-SHA1(secret, username)).
pub fn turn_rest_credential(secret: &str, expires_at: u64, user: &str) -> (String, String) {
    let username = format!("{expires_at}:{user}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// The `ice.servers[]` entries for `turn` servers: REST credentials for `user` expiring at
/// `expires_at` where a secret is configured, static credentials verbatim (`ttl_secs` 0) elsewhere.
pub fn servers(turn: &[TurnServer], user: &str, ttl_secs: u64, expires_at: u64) -> Vec<IceServer> {
    turn.iter()
        .filter_map(|t| {
            let (username, credential, ttl, expiry) = match (&t.secret, &t.username, &t.password) {
                (Some(secret), _, _) => {
                    let (u, c) = turn_rest_credential(secret, expires_at, user);
                    (u, c, ttl_secs, Some(crate::time::rfc3339(expires_at)))
                }
                (None, Some(u), Some(p)) => (u.clone(), p.clone(), 0, None),
                // The config refuses anything else.
                _ => return None,
            };
            Some(IceServer {
                urls: t.urls.clone(),
                username,
                credential,
                ttl_secs: ttl,
                expires_at: expiry,
                realm: t.realm.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_random_bounded_and_expire() {
        let creds = Credentials::new(Duration::from_secs(60), 3);
        let issued: Vec<_> = (0..4).map(|_| creds.issue()).collect();
        for (u, p) in &issued {
            assert_eq!(u.len(), UFRAG_LEN);
            assert_eq!(p.len(), PASSWORD_LEN);
            assert!(u.bytes().chain(p.bytes()).all(|c| ICE_CHARS.contains(&c)));
        }
        assert_ne!(issued[0], issued[1]);
        assert_eq!(creds.password(&issued[0].0), None, "oldest forgotten");
        assert_eq!(creds.password(&issued[3].0), Some(issued[3].1.clone()));
        let short = Credentials::new(Duration::ZERO, 3);
        let (u, _) = short.issue();
        assert_eq!(short.password(&u), None, "expired");
    }

    #[test]
    fn turn_rest_credentials_match_coturn() {
        // coturn computes base64(HMAC-SHA1(static-auth-secret, "expiry:user")); this value comes
        // from `printf '1700000000:alice' | openssl dgst -sha1 -hmac north -binary | base64`.
        let (u, c) = turn_rest_credential("north", 1_700_000_000, "alice");
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn host_candidate_line() {
        let c = host_candidate("198.51.100.10:3478".parse().unwrap());
        assert_eq!(c.priority, 2_130_706_431);
        assert_eq!(
            c.candidate,
            format!(
                "candidate:{} 1 udp 2130706431 198.51.100.10 3478 typ host generation 0",
                c.foundation
            )
        );
        assert_eq!(c.foundation.len(), 8);
    }
}
