//! The signed key bundle a node hands to peers that open sessions to it (`protocols/data-v1.md` §4):
//! its X25519 Noise static key and ML-KEM-768 encapsulation key, with its identity binding, signed by
//! both identity keys.

use libp2p::PeerId;
use ml_dsa::{MlDsa65, Signature};
use ml_kem::{
    Decapsulate as _, DecapsulationKey, Encapsulate as _, EncapsulationKey, KeyExport as _,
    MlKem768,
};
use sha2::{Digest, Sha256};

use super::Error;
use crate::identity::{self, Binding, Identity};

mod cache;

pub use cache::{Cache, MAX_CACHED_BUNDLES};

pub const VERSION: u8 = 1;
pub const X25519_LEN: usize = 32;
/// ML-KEM-768 encapsulation key.
pub const KEM_EK_LEN: usize = 1184;
/// ML-KEM-768 ciphertext.
pub const KEM_CT_LEN: usize = 1088;
/// The signed part: version, created_at, keys, identity binding.
pub const BODY_LEN: usize = 1
    + 8
    + X25519_LEN
    + KEM_EK_LEN
    + identity::ML_DSA_PUBLIC_KEY_LEN
    + 64
    + identity::ML_DSA_SIGNATURE_LEN;
/// A whole bundle: body and both signatures (9 923 bytes).
pub const BUNDLE_LEN: usize = BODY_LEN + 64 + identity::ML_DSA_SIGNATURE_LEN;
/// Ed25519 domain prefix and ML-DSA-65 context of the bundle signatures.
pub const SIGNATURE_CONTEXT: &[u8] = b"commucat/bundle/v1";
/// File in the data directory with the bundle secrets (see [`super::keyring`]).
pub const FILE_NAME: &str = "bundle.key";

/// `SHA-256(body)[0..16]`: names a bundle in HANDSHAKE step 1.
pub type BundleId = [u8; 16];

/// A verified public key bundle of some peer.
#[derive(Clone)]
pub struct Bundle {
    /// Shared, not copied, when the bundle goes into a BUNDLE frame.
    bytes: bytes::Bytes,
    peer_id: PeerId,
    created_at: u64,
    x25519_public: [u8; X25519_LEN],
    kem_ek: EncapsulationKey<MlKem768>,
    binding: Binding,
    id: BundleId,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("peer_id", &self.peer_id)
            .field("id", &hex::encode(self.id))
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Builds and signs the bundle of `identity` for the given public keys.
    fn sign(
        identity: &Identity,
        created_at: u64,
        x25519_public: [u8; 32],
        kem_ek: &EncapsulationKey<MlKem768>,
    ) -> Self {
        let binding = identity.binding();
        let mut bytes = Vec::with_capacity(BUNDLE_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&created_at.to_be_bytes());
        bytes.extend_from_slice(&x25519_public);
        bytes.extend_from_slice(&kem_ek.to_bytes());
        bytes.extend_from_slice(&binding.ml_dsa_public);
        bytes.extend_from_slice(&binding.ed25519_signature);
        bytes.extend_from_slice(&binding.ml_dsa_signature);
        debug_assert_eq!(bytes.len(), BODY_LEN);
        let peer = identity.peer_id().to_bytes();
        let ed = identity
            .keypair()
            .sign(&[SIGNATURE_CONTEXT, &peer, &bytes].concat())
            .expect("Ed25519 signing cannot fail");
        let ml = identity.sign_ml_dsa(&[&peer[..], &bytes].concat(), SIGNATURE_CONTEXT);
        bytes.extend_from_slice(&ed);
        bytes.extend_from_slice(&ml);
        Self::verify(&bytes, &identity.peer_id()).expect("a bundle we just signed verifies")
    }

    /// Parses `bytes` as the bundle of `peer` and checks both signatures (`data-v1.md` §4: they
    /// cover the binding, whose own signatures are not checked again).
    pub fn verify(bytes: &[u8], peer: &PeerId) -> Result<Self, Error> {
        Self::parse(bytes, peer, true)
    }

    /// Parses `bytes` as the bundle of `peer` without checking any signature: for a handshake
    /// that goes on while [`Bundle::verify`] runs beside it, and uses no key it yields before
    /// that check passed (`protocols/data-v2.md` §3).
    pub fn parse_unverified(bytes: &[u8], peer: &PeerId) -> Result<Self, Error> {
        Self::parse(bytes, peer, false)
    }

    fn parse(bytes: &[u8], peer: &PeerId, check: bool) -> Result<Self, Error> {
        if bytes.len() != BUNDLE_LEN {
            return Err(Error::BadBundle("wrong length"));
        }
        if bytes[0] != VERSION {
            return Err(Error::BadBundle("unknown version"));
        }
        let (body, sigs) = bytes.split_at(BODY_LEN);
        let mut r = Reader(&body[1..]);
        let created_at = u64::from_be_bytes(r.take());
        let x25519_public: [u8; 32] = r.take();
        let kem_ek_bytes = r.bytes(KEM_EK_LEN);
        let binding = Binding {
            peer_id: *peer,
            ml_dsa_public: r.bytes(identity::ML_DSA_PUBLIC_KEY_LEN).to_vec(),
            ed25519_signature: r.bytes(64).to_vec(),
            ml_dsa_signature: r.bytes(identity::ML_DSA_SIGNATURE_LEN).to_vec(),
        };
        if check {
            Self::check(&binding, body, sigs, peer)?;
        }
        let ek_array = kem_ek_bytes
            .try_into()
            .map_err(|_| Error::BadBundle("ML-KEM-768 key length"))?;
        let kem_ek = EncapsulationKey::<MlKem768>::new(ek_array)
            .map_err(|_| Error::BadBundle("ML-KEM-768 key"))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&Sha256::digest(body)[..16]);
        Ok(Self {
            bytes: bytes::Bytes::copy_from_slice(bytes),
            peer_id: *peer,
            created_at,
            x25519_public,
            kem_ek,
            binding,
            id,
        })
    }

    /// Both signatures over `peer ‖ body`: Ed25519 under `peer`'s key, ML-DSA-65 under the key
    /// `binding` names. Together they imply what the binding's own signatures say.
    fn check(binding: &Binding, body: &[u8], sigs: &[u8], peer: &PeerId) -> Result<(), Error> {
        let (ed_sig, ml_sig) = sigs.split_at(64);
        let peer_bytes = peer.to_bytes();
        let ed_public =
            identity::public_key_of(peer).ok_or(Error::BadBundle("peer id has no Ed25519 key"))?;
        if !ed_public.verify(&[SIGNATURE_CONTEXT, &peer_bytes, body].concat(), ed_sig) {
            return Err(Error::BadBundle("Ed25519 signature"));
        }
        let vk = binding
            .ml_dsa_verifying_key()
            .ok_or(Error::BadBundle("ML-DSA-65 key"))?;
        let sig = Signature::<MlDsa65>::try_from(ml_sig)
            .map_err(|_| Error::BadBundle("ML-DSA-65 signature encoding"))?;
        if !vk.verify_with_context(&[&peer_bytes[..], body].concat(), SIGNATURE_CONTEXT, &sig) {
            return Err(Error::BadBundle("ML-DSA-65 signature"));
        }
        Ok(())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bundle's bytes for a BUNDLE frame (shared, not copied).
    pub fn to_bytes(&self) -> bytes::Bytes {
        self.bytes.clone()
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn id(&self) -> BundleId {
        self.id
    }

    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The Noise static public key.
    pub fn x25519_public(&self) -> &[u8; X25519_LEN] {
        &self.x25519_public
    }

    /// The ML-KEM-768 encapsulation key (1184 bytes).
    pub fn kem_public(&self) -> Vec<u8> {
        self.kem_ek.to_bytes().to_vec()
    }

    /// The identity binding inside the bundle: its ML-DSA-65 key is vouched for by both bundle
    /// signatures (its own two signatures are as the owner wrote them).
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Encapsulates a fresh shared secret to the bundle's ML-KEM-768 key: `(ciphertext, secret)`.
    pub fn encapsulate(&self) -> (Vec<u8>, [u8; 32]) {
        let (ct, ss) = self.kem_ek.encapsulate_with_rng(&mut rand::rng());
        (ct.to_vec(), ss.into())
    }

    /// As [`Bundle::encapsulate`] with the FIPS 203 message `m` given (test vectors only).
    pub fn encapsulate_deterministic(&self, m: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        let (ct, ss) = self.kem_ek.encapsulate_deterministic(&(*m).into());
        (ct.to_vec(), ss.into())
    }
}

/// Encapsulates to an ML-KEM-768 encapsulation key given as bytes (a KEY_UPDATE's or a
/// handshake's ephemeral key): `(ciphertext, secret)`; with `m`, deterministically (test vectors).
pub fn encapsulate_to(ek: &[u8], m: Option<&[u8; 32]>) -> Result<(Vec<u8>, [u8; 32]), Error> {
    let array = ek.try_into().map_err(|_| Error::BadKemCiphertext)?;
    let ek = EncapsulationKey::<MlKem768>::new(array).map_err(|_| Error::BadKemCiphertext)?;
    let (ct, ss) = match m {
        Some(m) => ek.encapsulate_deterministic(&(*m).into()),
        None => ek.encapsulate_with_rng(&mut rand::rng()),
    };
    Ok((ct.to_vec(), ss.into()))
}

/// A one-time ML-KEM-768 key pair (a v2 handshake's ephemeral key, a key update's): dropped, with
/// its secret, once its ciphertext is decapsulated.
pub struct EphemeralKem {
    dk: DecapsulationKey<MlKem768>,
}

impl EphemeralKem {
    /// A fresh key pair; from `seed` (`d ‖ z`) for test vectors.
    pub fn generate(seed: Option<[u8; 64]>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            let mut s = [0u8; 64];
            rand::fill(&mut s[..]);
            s
        });
        Self {
            dk: DecapsulationKey::<MlKem768>::from_seed(seed.into()),
        }
    }

    /// The encapsulation key (1184 bytes).
    pub fn public(&self) -> Vec<u8> {
        self.dk.encapsulation_key().to_bytes().to_vec()
    }

    pub fn decapsulate(&self, ct: &[u8]) -> Result<[u8; 32], Error> {
        self.dk
            .decapsulate_slice(ct)
            .map(Into::into)
            .map_err(|_| Error::BadKemCiphertext)
    }
}

/// Fixed-layout reader over a slice whose length was checked before.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        self.bytes(N).try_into().expect("length checked")
    }
}

/// The bundle's secret keys, and the signed public bundle.
pub struct Keys {
    x25519_secret: [u8; 32],
    kem_seed: [u8; 64],
    kem_dk: DecapsulationKey<MlKem768>,
    bundle: Bundle,
}

impl Keys {
    /// Fresh keys for `identity`, created now.
    pub fn generate(identity: &Identity) -> Self {
        let created_at = crate::time::unix_secs();
        let mut seed = [0u8; 64];
        rand::fill(&mut seed[..]);
        Self::from_secrets(identity, created_at, rand::random(), seed)
    }

    /// Rebuilds the keys (and re-signs the bundle, deterministically) from their secrets.
    pub fn from_secrets(
        identity: &Identity,
        created_at: u64,
        x25519_secret: [u8; 32],
        kem_seed: [u8; 64],
    ) -> Self {
        let x25519_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x25519_secret))
                .to_bytes();
        let kem_dk = DecapsulationKey::<MlKem768>::from_seed(kem_seed.into());
        let bundle = Bundle::sign(
            identity,
            created_at,
            x25519_public,
            kem_dk.encapsulation_key(),
        );
        Self {
            x25519_secret,
            kem_seed,
            kem_dk,
            bundle,
        }
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The Noise static secret key.
    pub fn x25519_secret(&self) -> &[u8; 32] {
        &self.x25519_secret
    }

    /// The ML-KEM-768 decapsulation key seed (`d ‖ z`), as saved in `bundle.key`.
    pub fn kem_seed(&self) -> &[u8; 64] {
        &self.kem_seed
    }

    /// Decapsulates an ML-KEM-768 ciphertext. Wrong ciphertexts of the right length give an
    /// unrelated secret (implicit rejection); key confirmation catches them.
    pub fn decapsulate(&self, ct: &[u8]) -> Result<[u8; 32], Error> {
        self.kem_dk
            .decapsulate_slice(ct)
            .map(Into::into)
            .map_err(|_| Error::BadKemCiphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_verify_only_for_their_owner_and_unchanged() {
        let alice = Identity::generate();
        let keys = Keys::generate(&alice);
        let bytes = keys.bundle().as_bytes().to_vec();
        assert_eq!(bytes.len(), BUNDLE_LEN);
        let ok = Bundle::verify(&bytes, &alice.peer_id()).unwrap();
        assert_eq!(ok.id(), keys.bundle().id());

        let mallory = Identity::generate();
        assert!(
            Bundle::verify(&bytes, &mallory.peer_id()).is_err(),
            "someone else's bundle"
        );
        for at in [0, 5, 40, 2000, BODY_LEN - 1, BODY_LEN + 3, BUNDLE_LEN - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            assert!(
                Bundle::verify(&b, &alice.peer_id()).is_err(),
                "flipped byte {at}"
            );
        }
        assert!(Bundle::verify(&bytes[..100], &alice.peer_id()).is_err());

        // Mallory's own keys wrapped in Alice's binding: the signatures are not Alice's.
        let forged_keys = Keys::generate(&mallory);
        let mut forged = forged_keys.bundle().as_bytes().to_vec();
        forged[1 + 8 + 32 + KEM_EK_LEN..BODY_LEN]
            .copy_from_slice(&bytes[1 + 8 + 32 + KEM_EK_LEN..BODY_LEN]);
        assert!(Bundle::verify(&forged, &alice.peer_id()).is_err());
    }

    #[test]
    fn kem_round_trip_and_deterministic_signing() {
        let id = Identity::generate();
        let keys = Keys::generate(&id);
        let again = Keys::from_secrets(
            &id,
            keys.bundle().created_at(),
            *keys.x25519_secret(),
            *keys.kem_seed(),
        );
        assert_eq!(
            keys.bundle().as_bytes(),
            again.bundle().as_bytes(),
            "rebuilt from its secrets"
        );
        let (ct, ss) = again.bundle().encapsulate();
        assert_eq!(ct.len(), KEM_CT_LEN);
        assert_eq!(keys.decapsulate(&ct).unwrap(), ss);
        assert!(keys.decapsulate(&ct[1..]).is_err());
    }
}
