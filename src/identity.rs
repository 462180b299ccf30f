//! Node identity: an Ed25519 keypair (the libp2p [`PeerId`]) and an ML-DSA-65 keypair, bound to each
//! other so that either key can be checked against the other.
//!
//! Spec: `protocols/identity-v1.md` (binding messages, on-disk format, test vector
//! `protocols/vectors/identity-v1.json`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use libp2p::{PeerId, identity::Keypair};
use ml_dsa::{
    EncodedVerifyingKey, ExpandedSigningKey, MlDsa65, Signature, SigningKey, VerifyingKey,
    signature::Keypair as _,
};
use serde::{Deserialize, Serialize};

/// Length of [`Identity::sign_record`]'s output: Ed25519 (64) then ML-DSA-65.
pub const SIGNATURES_LEN: usize = 64 + ML_DSA_SIGNATURE_LEN;

/// Whether `sigs` are `peer`'s (its Ed25519 key, and `ml_dsa`) over a record, as
/// [`Identity::sign_record`] makes them.
pub fn verify_record(
    peer: &PeerId,
    ml_dsa: &VerifyingKey<MlDsa65>,
    context: &[u8],
    key: &[u8],
    body: &[u8],
    sigs: &[u8],
) -> bool {
    if sigs.len() != SIGNATURES_LEN {
        return false;
    }
    let (ed_sig, ml_sig) = sigs.split_at(64);
    let Some(ed_public) = public_key_of(peer) else {
        return false;
    };
    ed_public.verify(&[context, key, body].concat(), ed_sig)
        && Signature::<MlDsa65>::try_from(ml_sig)
            .is_ok_and(|sig| ml_dsa.verify_with_context(&[key, body].concat(), context, &sig))
}

/// Name of the secret identity file inside the data directory.
pub const FILE_NAME: &str = "identity.key";
/// Version of the on-disk format written by this code.
pub const FILE_VERSION: u32 = 1;
/// Domain-separation prefix of the message the Ed25519 key signs: prefix ‖ ML-DSA-65 public key.
pub const ED25519_BINDING_PREFIX: &[u8] = b"commucat/identity/v1/ml-dsa-65-key";
/// ML-DSA-65 context string (FIPS 204 `ctx`) of the signature over the PeerId bytes.
pub const ML_DSA_BINDING_CONTEXT: &[u8] = b"commucat/identity/v1/peer-id";
/// Size of an encoded ML-DSA-65 public key.
pub const ML_DSA_PUBLIC_KEY_LEN: usize = 1952;
/// Size of an encoded ML-DSA-65 signature.
pub const ML_DSA_SIGNATURE_LEN: usize = 3309;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "identity file {path} has format version {found}; this build reads version {FILE_VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("identity binding does not verify: {0}")]
    BadBinding(&'static str),
}

/// The two keys of a node and the signatures that bind them.
pub struct Identity {
    keypair: Keypair,
    /// The expanded ML-DSA-65 key alone: ml-dsa's `SigningKey` also keeps a precomputed
    /// verifying key (~43 KiB), which signing never reads and peers get encoded in `binding`.
    ml_dsa: ExpandedSigningKey<MlDsa65>,
    ml_dsa_seed: [u8; 32],
    binding: Binding,
}

/// Public half of an identity: what a peer needs to check that an ML-DSA-65 key belongs to a PeerId.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub peer_id: PeerId,
    /// Encoded ML-DSA-65 verifying key, 1952 bytes.
    #[serde(with = "hex::serde")]
    pub ml_dsa_public: Vec<u8>,
    /// Ed25519 signature over `ED25519_BINDING_PREFIX ‖ ml_dsa_public`.
    #[serde(with = "hex::serde")]
    pub ed25519_signature: Vec<u8>,
    /// ML-DSA-65 signature over the PeerId bytes, context `ML_DSA_BINDING_CONTEXT`.
    #[serde(with = "hex::serde")]
    pub ml_dsa_signature: Vec<u8>,
}

/// On-disk form of [`Identity`] (TOML, mode 0600).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    peer_id: String,
    ed25519_secret: String,
    ml_dsa_65_seed: String,
}

impl Identity {
    /// Fresh keys from the thread-local CSPRNG.
    pub fn generate() -> Self {
        Self::from_secrets(rand::random(), rand::random())
    }

    /// Rebuilds an identity from its two 32-byte secrets (Ed25519 secret key, ML-DSA-65 seed ξ).
    pub fn from_secrets(ed25519_secret: [u8; 32], ml_dsa_seed: [u8; 32]) -> Self {
        let mut secret = ed25519_secret;
        let keypair = Keypair::ed25519_from_bytes(&mut secret)
            .expect("any 32 bytes are a valid Ed25519 secret key");
        let ml_dsa = SigningKey::<MlDsa65>::from_seed(&ml_dsa_seed.into());
        let binding = Binding::create(&keypair, &ml_dsa);
        Self {
            keypair,
            ml_dsa: ml_dsa.expanded_key().clone(),
            ml_dsa_seed,
            binding,
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.binding.peer_id
    }

    /// The libp2p (Ed25519) keypair.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Signs `msg` with the ML-DSA-65 key (deterministic variant, FIPS 204 context `ctx`, ≤ 255 bytes).
    pub fn sign_ml_dsa(&self, msg: &[u8], ctx: &[u8]) -> Vec<u8> {
        self.ml_dsa
            .sign_deterministic(msg, ctx)
            .expect("contexts used by this crate are shorter than 255 bytes")
            .encode()
            .to_vec()
    }

    /// Both signatures of a signed record (`dht-records-v1.md` §2, names, group log entries):
    /// Ed25519 over `context ‖ key ‖ body`, then ML-DSA-65 over `key ‖ body` with `context`;
    /// [`SIGNATURES_LEN`] bytes.
    pub fn sign_record(&self, context: &[u8], key: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = self
            .keypair
            .sign(&[context, key, body].concat())
            .expect("Ed25519 signing cannot fail");
        out.extend_from_slice(&self.sign_ml_dsa(&[key, body].concat(), context));
        out
    }

    fn secrets(&self) -> ([u8; 32], [u8; 32]) {
        let ed = self
            .keypair
            .clone()
            .try_into_ed25519()
            .expect("identities are always Ed25519");
        let mut ed_secret = [0u8; 32];
        ed_secret.copy_from_slice(ed.secret().as_ref());
        (ed_secret, self.ml_dsa_seed)
    }

    /// Loads the identity stored in `dir`, or `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let malformed = |reason: String| Error::Malformed {
            path: path.clone(),
            reason,
        };
        let file: File = toml::from_str(&text).map_err(|e| malformed(e.message().to_owned()))?;
        if file.version != FILE_VERSION {
            return Err(Error::UnsupportedVersion {
                path,
                found: file.version,
            });
        }
        let ed = hex_array::<32>("ed25519_secret", &file.ed25519_secret)
            .map_err(|e| malformed(e.to_string()))?;
        let seed = hex_array::<32>("ml_dsa_65_seed", &file.ml_dsa_65_seed)
            .map_err(|e| malformed(e.to_string()))?;
        let identity = Self::from_secrets(ed, seed);
        if identity.peer_id().to_string() != file.peer_id {
            return Err(malformed(format!(
                "peer_id {} does not match the stored key (which gives {})",
                file.peer_id,
                identity.peer_id()
            )));
        }
        Ok(Some(identity))
    }

    /// Loads the identity in `dir`, creating and saving a new one if there is none.
    /// Returns the identity and whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), Error> {
        if let Some(identity) = Self::load(dir)? {
            return Ok((identity, false));
        }
        let identity = Self::generate();
        identity.save(dir)?;
        Ok((identity, true))
    }

    /// Writes the identity to `dir/identity.key` with mode 0600 (atomically: temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        crate::fsutil::create_private_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (ed, seed) = self.secrets();
        let file = File {
            version: FILE_VERSION,
            peer_id: self.peer_id().to_string(),
            ed25519_secret: hex::encode(ed),
            ml_dsa_65_seed: hex::encode(seed),
        };
        let body = toml::to_string(&file).expect("the identity file is plain strings and numbers");
        let text = format!(
            "# CommuCat node identity (format: protocols/identity-v1.md).\n\
             # SECRET: whoever has this file can act as this node. Keep it mode 0600.\n{body}"
        );
        let path = dir.join(FILE_NAME);
        crate::fsutil::write_private(&path, text.as_bytes())
            .map_err(|source| Error::Io { path, source })
    }
}

impl Binding {
    fn create(keypair: &Keypair, ml_dsa: &SigningKey<MlDsa65>) -> Self {
        let peer_id = keypair.public().to_peer_id();
        let ml_dsa_public = ml_dsa.verifying_key().encode().to_vec();
        let ed25519_signature = keypair
            .sign(&ed25519_message(&ml_dsa_public))
            .expect("Ed25519 signing cannot fail");
        let ml_dsa_signature = ml_dsa
            .expanded_key()
            .sign_deterministic(&peer_id.to_bytes(), ML_DSA_BINDING_CONTEXT)
            .expect("the binding context is shorter than 255 bytes")
            .encode()
            .to_vec();
        Self {
            peer_id,
            ml_dsa_public,
            ed25519_signature,
            ml_dsa_signature,
        }
    }

    /// Checks both signatures: the Ed25519 key inside the PeerId signed the ML-DSA-65 key, and the
    /// ML-DSA-65 key signed the PeerId.
    pub fn verify(&self) -> Result<(), Error> {
        let ed_public = public_key_of(&self.peer_id).ok_or(Error::BadBinding(
            "peer id does not embed an Ed25519 public key",
        ))?;
        if !ed_public.verify(
            &ed25519_message(&self.ml_dsa_public),
            &self.ed25519_signature,
        ) {
            return Err(Error::BadBinding(
                "Ed25519 signature over the ML-DSA-65 key",
            ));
        }
        let vk = self.ml_dsa_verifying_key().ok_or(Error::BadBinding(
            "ML-DSA-65 public key has the wrong length",
        ))?;
        let sig = Signature::<MlDsa65>::try_from(self.ml_dsa_signature.as_slice())
            .map_err(|_| Error::BadBinding("ML-DSA-65 signature is malformed"))?;
        if !vk.verify_with_context(&self.peer_id.to_bytes(), ML_DSA_BINDING_CONTEXT, &sig) {
            return Err(Error::BadBinding("ML-DSA-65 signature over the peer id"));
        }
        Ok(())
    }

    /// The decoded ML-DSA-65 verifying key, if the stored bytes have the right length.
    pub fn ml_dsa_verifying_key(&self) -> Option<VerifyingKey<MlDsa65>> {
        let enc = EncodedVerifyingKey::<MlDsa65>::try_from(self.ml_dsa_public.as_slice()).ok()?;
        Some(VerifyingKey::decode(&enc))
    }
}

fn ed25519_message(ml_dsa_public: &[u8]) -> Vec<u8> {
    [ED25519_BINDING_PREFIX, ml_dsa_public].concat()
}

/// The public key inlined in a PeerId (identity multihash), as libp2p does for Ed25519 keys.
pub fn public_key_of(peer_id: &PeerId) -> Option<libp2p::identity::PublicKey> {
    const IDENTITY_MULTIHASH: u64 = 0x00;
    let mh = peer_id.as_ref();
    if mh.code() != IDENTITY_MULTIHASH {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// A hex field of a key file that does not hold the bytes it should.
#[derive(Debug, thiserror::Error)]
pub enum BadHex {
    #[error("{field} is not hex: {source}")]
    NotHex {
        field: &'static str,
        source: hex::FromHexError,
    },
    #[error("{field} must be {expected} bytes, found {found}")]
    Length {
        field: &'static str,
        expected: usize,
        found: usize,
    },
}

/// Exactly `N` bytes from the hex of key-file field `field`.
pub(crate) fn hex_array<const N: usize>(
    field: &'static str,
    text: &str,
) -> Result<[u8; N], BadHex> {
    let bytes = hex::decode(text).map_err(|source| BadHex::NotHex { field, source })?;
    bytes.try_into().map_err(|b: Vec<u8>| BadHex::Length {
        field,
        expected: N,
        found: b.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        ed25519_secret: String,
        ml_dsa_65_seed: String,
        peer_id: String,
        ml_dsa_public: String,
        ed25519_signature: String,
        ml_dsa_signature: String,
    }

    fn vector() -> Vector {
        serde_json::from_str(include_str!("../protocols/vectors/identity-v1.json"))
            .expect("vector file parses")
    }

    #[test]
    fn spec_vector_reproduces_byte_for_byte() {
        let v = vector();
        let id = Identity::from_secrets(
            hex_array::<32>("ed25519_secret", &v.ed25519_secret).unwrap(),
            hex_array::<32>("ml_dsa_65_seed", &v.ml_dsa_65_seed).unwrap(),
        );
        let b = id.binding();
        assert_eq!(b.peer_id.to_string(), v.peer_id);
        assert_eq!(hex::encode(&b.ml_dsa_public), v.ml_dsa_public);
        assert_eq!(hex::encode(&b.ed25519_signature), v.ed25519_signature);
        assert_eq!(hex::encode(&b.ml_dsa_signature), v.ml_dsa_signature);
        b.verify().expect("vector binding verifies");
    }

    #[test]
    fn tampered_bindings_are_rejected() {
        let id = Identity::generate();
        let good = id.binding().clone();
        good.verify().unwrap();

        let mut b = good.clone();
        b.ml_dsa_public[10] ^= 1;
        assert!(b.verify().is_err(), "changed ML-DSA key");

        let mut b = good.clone();
        b.ml_dsa_signature[100] ^= 1;
        assert!(b.verify().is_err(), "changed ML-DSA signature");

        let mut b = good.clone();
        b.ed25519_signature[0] ^= 1;
        assert!(b.verify().is_err(), "changed Ed25519 signature");

        let other = Identity::generate();
        let mut b = good.clone();
        b.peer_id = other.peer_id();
        assert!(b.verify().is_err(), "binding moved to another peer id");

        let mut b = good;
        b.ml_dsa_public.truncate(100);
        assert!(b.verify().is_err(), "short key");
    }

    #[test]
    fn save_load_round_trip_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(a.binding(), b.binding());
        let mode = fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(
            &path,
            "version = 1\npeer_id = \"x\"\ned25519_secret = \"zz\"\nml_dsa_65_seed = \"00\"\n",
        )
        .unwrap();
        let err = Identity::load_or_create(dir.path())
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("ed25519_secret"), "{err}");
        // The broken file is left for the user to inspect, never overwritten with a new identity.
        assert!(fs::read_to_string(&path).unwrap().contains("zz"));
    }
}
