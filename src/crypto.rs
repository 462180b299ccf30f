//! Cryptography of the data protocol (`protocols/data-v1.md`): the signed key bundle (§4), the hybrid
//! Noise + ML-KEM-768 + ML-DSA-65 handshake (§3) and the sealing of session frames (§2, SEALED).

pub mod aead;
pub mod bundle;
pub mod handshake;

use std::path::PathBuf;

pub use bundle::{Bundle, BundleId};
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
