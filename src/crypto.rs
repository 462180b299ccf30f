//! Cryptography of the data protocol (`protocols/data-v1.md`): the signed key bundle (§4), the hybrid
//! Noise + ML-KEM-768 + ML-DSA-65 handshake (§3) and the sealing of session frames (§2, SEALED).

pub mod aead;
pub mod bundle;
pub mod handshake;

use std::path::{Path, PathBuf};

pub use bundle::{Bundle, BundleId};

use crate::identity::Identity;

/// This node's long-term keys: its identity and its key bundle. Shared by the node (it signs the
/// presence record) and every session.
pub struct LocalKeys {
    pub identity: Identity,
    pub bundle: bundle::Keys,
}

impl LocalKeys {
    /// Fresh keys (tests, in-process simulation).
    pub fn generate() -> Self {
        let identity = Identity::generate();
        let bundle = bundle::Keys::generate(&identity);
        Self { identity, bundle }
    }

    /// The bundle of `identity`, loaded from (or created in) the data directory.
    pub fn load_or_create(dir: &Path, identity: Identity) -> Result<Self, Error> {
        let bundle = bundle::Keys::load_or_create(dir, &identity)?;
        Ok(Self { identity, bundle })
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
