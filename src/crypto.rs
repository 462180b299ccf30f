//! Cryptography of the data protocol (`protocols/data-v1.md`): the signed key bundle (§4), the hybrid
//! Noise + ML-KEM-768 + ML-DSA-65 handshake (§3) and the sealing of session frames (§2, SEALED).

pub mod aead;
pub mod bundle;
pub mod handshake;
pub mod keyring;
pub mod safety;

use std::path::{Path, PathBuf};

pub use bundle::{Bundle, BundleId};
pub use keyring::KeyRing;

use crate::identity::Identity;

/// This node's long-term keys: its identity and its rotating key bundles. Shared by the node (it
/// signs the presence record) and every session.
pub struct LocalKeys {
    pub identity: Identity,
    pub bundle: KeyRing,
}

impl LocalKeys {
    /// Fresh keys on the default rotation schedule, not saved (tests, in-process simulation).
    pub fn generate() -> Self {
        let identity = Identity::generate();
        let bundle = KeyRing::generate(&identity, keyring::Schedule::default());
        Self { identity, bundle }
    }

    /// The bundles of `identity`, loaded from (or created in) the data directory.
    pub fn load_or_create(
        dir: &Path,
        identity: Identity,
        schedule: keyring::Schedule,
    ) -> Result<Self, Error> {
        let bundle = KeyRing::load_or_create(dir, &identity, schedule)?;
        Ok(Self { identity, bundle })
    }

    /// Replaces the current bundle if it is due; see [`KeyRing::rotate_if_due`].
    pub fn rotate_if_due(&self) -> Result<bool, Error> {
        self.bundle
            .rotate_if_due(&self.identity, crate::time::unix_secs())
    }

    pub fn peer_id(&self) -> libp2p::PeerId {
        self.identity.peer_id()
    }
}
pub use handshake::{Pattern, Role, SessionKeys};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    #[error("ML-KEM ciphertext rejected")]
    BadKemCiphertext,
    #[error("key bundle rejected: {0}")]
    BadBundle(&'static str),
    #[error("signature rejected: {0}")]
    BadSignature(&'static str),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}
