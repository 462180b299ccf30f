//! Pairing light clients by code (`protocols/pairing-v1.md`, CCP-1 §5): the node's owner
//! (`commucat pair`, `POST /v1/pairing`) or a paired device (`POST /api/pairing`) gets a one-time
//! code; a browser redeems it at `POST /api/pairing/claim` for a device id, device keys derived
//! from the code's seed, a certificate signed by the node's device CA, and an assist token bound
//! to the device. `commucat devices revoke` takes all of it back.
//!
//! - [`mod@format`]: codes, device keys and certificates, byte for byte.
//! - [`DeviceCa`]: the device CA's Ed25519 key, in `DATA_DIR/device-ca.key`.
//! - [`Pairing`]: pending codes (in memory, bounded), claims with their per-IP and global limits,
//!   the paired devices (`store::Devices`).

pub mod format;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use libp2p::{PeerId, identity::ed25519};
use serde::{Deserialize, Serialize};

use super::{Tokens, rate_limit};
use crate::{
    store::{self, devices::Device},
    wire::ClientId,
};
pub use format::{Certificate, Code};

/// Codes waiting to be claimed at once; expired ones are dropped first.
pub const MAX_PENDING_CODES: usize = 64;
/// Longest code lifetime `assist.pairing_code_ttl_secs` may set.
pub const MAX_CODE_TTL_SECS: u64 = 24 * 3600;
/// Claims one IP address (IPv6: one /64) may make per [`CLAIM_WINDOW`]…
pub const CLAIMS_PER_IP: u32 = 5;
pub const CLAIM_WINDOW: Duration = Duration::from_secs(15 * 60);
/// …after which it is refused for this long.
pub const CLAIM_LOCKOUT: Duration = Duration::from_secs(3600);
/// Claims from all addresses together per minute: what bounds a guesser with many addresses.
pub const CLAIMS_PER_MINUTE: u32 = 1000;
/// Characters of a device name at most.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
/// File in the data directory that holds the device CA's key.
pub const CA_FILE: &str = "device-ca.key";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the pairing code is wrong, expired or already used")]
    BadCode,
    #[error("too many pairing attempts; try again in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("{MAX_PENDING_CODES} pairing codes are waiting to be claimed; try again when one is")]
    TooManyCodes,
    #[error(
        "assist mode is not running, so a device has nowhere to pair: start the node with --assist"
    )]
    AssistOff,
    #[error(
        "a device name has at most {MAX_DEVICE_NAME_CHARS} characters and no control characters"
    )]
    BadName,
    #[error("no paired device has the id {0}")]
    NoSuchDevice(ClientId),
    #[error(transparent)]
    Tokens(#[from] super::tokens::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl From<Error> for crate::http::Problem {
    fn from(e: Error) -> Self {
        use axum::http::StatusCode;
        match e {
            Error::RateLimited(wait) => Self::rate_limited(wait.as_secs().max(1)),
            Error::BadCode => Self::new(StatusCode::UNAUTHORIZED, e.to_string()),
            Error::TooManyCodes => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Error::AssistOff => Self::new(StatusCode::CONFLICT, e.to_string()),
            Error::BadName => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            Error::NoSuchDevice(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            Error::Store(store::Error::Full(..)) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            Error::Tokens(e) => e.into(),
            Error::Store(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// Why the device CA key could not be had: the node refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is damaged (it must hold 64 hex digits, the device CA's Ed25519 secret); move it away \
         to make a new device CA, after which every paired device must pair again"
    )]
    Damaged(PathBuf),
}

/// The node's device CA: an Ed25519 key of its own (not the identity key), which signs device
/// certificates.
pub struct DeviceCa(ed25519::Keypair);

impl DeviceCa {
    /// Loads `dir/device-ca.key`, or makes and saves a new key when there is none; with no data
    /// directory (tests, simnet), a key for this run only.
    pub fn load_or_create(dir: Option<&Path>) -> Result<Self, CaError> {
        let Some(dir) = dir else {
            return Ok(Self(ed25519::Keypair::generate()));
        };
        let path = dir.join(CA_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut secret = hex::decode(text.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| CaError::Damaged(path.clone()))?;
                let secret = ed25519::SecretKey::try_from_bytes(&mut secret)
                    .map_err(|_| CaError::Damaged(path.clone()))?;
                Ok(Self(ed25519::Keypair::from(secret)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ed25519::Keypair::generate();
                let text = hex::encode(key.secret().as_ref()) + "\n";
                crate::fsutil::write_private(&path, text.as_bytes())
                    .map_err(|source| CaError::Io { path, source })?;
                Ok(Self(key))
            }
            Err(source) => Err(CaError::Io { path, source }),
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.0.public().to_bytes())
    }
}

/// A code waiting to be claimed.
struct Pending {
    expires_at: u64,
    device_seed: [u8; 32],
    invited_by: Option<ClientId>,
}

/// `POST /api/pairing` and `POST /v1/pairing`: a new code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    /// Ten symbols of Crockford base 32 in two groups (`7K1QD-N0XWA`): 50 bits.
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The seed the device's keys will be derived from (32 bytes, hex), so the inviter can tell
    /// the new device's key (`protocols/pairing-v1.md` §3).
    pub device_seed: String,
    pub device_ca_public: String,
    /// The light client's address with the code in its fragment, when assist mode runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `POST /api/pairing/claim` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub code: String,
    /// What to call the device in `commucat devices`.
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
}

/// `POST /api/pairing/claim` answer: the device's credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    pub device_id: ClientId,
    /// The device's Ed25519 secret (32 bytes, hex): derived from the seed, so also known to the
    /// node and the inviter.
    pub device_private: String,
    pub device_public: String,
    pub device_certificate: Certificate,
    pub device_ca_public: String,
    /// The node the device is paired with.
    pub node: PeerId,
    /// The assist bearer token of the device (its client id is `device_id`).
    pub token: String,
    pub expires_at: u64,
}

/// Pending codes, claims and paired devices.
pub struct Pairing {
    ca: DeviceCa,
    node: PeerId,
    tokens: Arc<Tokens>,
    devices: store::Devices,
    pending: Mutex<HashMap<Code, Pending>>,
    code_ttl_secs: u64,
    device_ttl_secs: u64,
    per_ip: rate_limit::RateLimiter,
    everyone: rate_limit::RateLimiter<()>,
    /// The light client's address, once assist mode serves it.
    client_url: OnceLock<String>,
}

impl Pairing {
    pub fn new(
        ca: DeviceCa,
        node: PeerId,
        tokens: Arc<Tokens>,
        devices: store::Devices,
        cfg: &super::Config,
    ) -> Self {
        Self {
            ca,
            node,
            tokens,
            devices,
            pending: Mutex::new(HashMap::new()),
            code_ttl_secs: cfg.pairing_code_ttl_secs.get(),
            device_ttl_secs: cfg.device_ttl_secs.get(),
            per_ip: rate_limit::RateLimiter::new(rate_limit::Limits {
                burst: CLAIMS_PER_IP,
                window: CLAIM_WINDOW,
                penalty: CLAIM_LOCKOUT,
            }),
            everyone: rate_limit::RateLimiter::with_capacity(
                rate_limit::Limits {
                    burst: CLAIMS_PER_MINUTE,
                    window: Duration::from_secs(60),
                    penalty: Duration::ZERO,
                },
                1,
            ),
            client_url: OnceLock::new(),
        }
    }

    pub fn ca_public_hex(&self) -> String {
        self.ca.public_hex()
    }

    pub fn code_ttl_secs(&self) -> u64 {
        self.code_ttl_secs
    }

    /// Assist mode serves the light client at `url` (`…/client/`).
    pub fn serving_at(&self, url: String) {
        let _ = self.client_url.set(url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Code, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new one-time code, for the node's owner (`invited_by` `None`) or a paired device.
    pub fn invite(&self, invited_by: Option<ClientId>) -> Result<Invitation, Error> {
        let base = self.client_url.get().ok_or(Error::AssistOff)?;
        let now = crate::time::unix_secs();
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires_at > now);
        if pending.len() >= MAX_PENDING_CODES {
            return Err(Error::TooManyCodes);
        }
        let code = loop {
            let c = Code::random();
            if !pending.contains_key(&c) {
                break c;
            }
        };
        let device_seed: [u8; 32] = rand::random();
        let expires_at = now + self.code_ttl_secs;
        pending.insert(
            code,
            Pending {
                expires_at,
                device_seed,
                invited_by,
            },
        );
        Ok(Invitation {
            code: code.to_string(),
            expires_at,
            device_seed: hex::encode(device_seed),
            device_ca_public: self.ca.public_hex(),
            url: Some(format!("{base}#pair={code}")),
        })
    }

    /// Redeems a code typed at `ip`: once, before it expires, within the claim limits.
    pub fn claim(&self, ip: IpAddr, req: &ClaimRequest) -> Result<Claimed, Error> {
        let now = Instant::now();
        // Per address first: an address locked out spends nothing of everyone's budget.
        self.per_ip.check(ip, now).map_err(Error::RateLimited)?;
        self.everyone
            .check_n((), 1, now)
            .map_err(Error::RateLimited)?;
        if req.name.as_ref().is_some_and(|n| {
            n.chars().count() > MAX_DEVICE_NAME_CHARS || n.chars().any(char::is_control)
        }) {
            return Err(Error::BadName);
        }
        let code = Code::parse(&req.code).ok_or(Error::BadCode)?;
        let unix = crate::time::unix_secs();
        let pending = self
            .lock()
            .remove(&code)
            .filter(|p| p.expires_at > unix)
            .ok_or(Error::BadCode)?;
        let issued = self.tokens.issue(self.device_ttl_secs)?;
        let device_id = issued.info.id;
        let keys = format::device_key(&pending.device_seed, &device_id);
        let device_public = keys.public().to_bytes();
        let certificate = Certificate::issue(
            &self.ca.0,
            device_id,
            device_public,
            self.node,
            unix,
            issued.info.expires_at,
        );
        let device = Device {
            id: device_id,
            name: req.name.clone(),
            device_public: hex::encode(device_public),
            paired_at: unix,
            expires_at: issued.info.expires_at,
            invited_by: pending.invited_by,
        };
        if let Err(e) = self.devices.add(&device) {
            let _ = self.tokens.revoke(&issued.token);
            return Err(e.into());
        }
        Ok(Claimed {
            device_id,
            device_private: hex::encode(keys.secret().as_ref()),
            device_public: hex::encode(device_public),
            device_certificate: certificate,
            device_ca_public: self.ca.public_hex(),
            node: self.node,
            token: issued.token,
            expires_at: issued.info.expires_at,
        })
    }

    /// The paired devices.
    pub fn devices(&self) -> Result<Vec<Device>, Error> {
        Ok(self.devices.all()?)
    }

    /// Unpairs a device: its token is revoked, which closes its signaling sessions and gateway
    /// channels at once.
    pub fn revoke(&self, id: &ClientId) -> Result<(), Error> {
        if !self.devices.remove(id)? {
            return Err(Error::NoSuchDevice(*id));
        }
        self.tokens.revoke(&id.to_string())?;
        Ok(())
    }
}

pub mod api;
