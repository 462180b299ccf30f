//! The byte formats of pairing (`protocols/pairing-v1.md` §2–§4): codes people type, device keys
//! derived from the seed, and device certificates. Vectors: `protocols/vectors/pairing-v1.json`.

use hkdf::SimpleHkdf;
use libp2p::{PeerId, identity::ed25519};
use serde::{Deserialize, Serialize};
use sha3::Sha3_256;

use crate::wire::ClientId;

/// Crockford's base-32 alphabet: digits and letters but I, L, O and U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols in a code; 5 bits each.
pub const CODE_SYMBOLS: usize = 10;
/// Bits of chance in a code.
pub const CODE_BITS: u32 = 50;

/// A pairing code: a 50-bit number (`protocols/pairing-v1.md` §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(u64);

impl Code {
    pub fn random() -> Self {
        Self(rand::random::<u64>() >> (64 - CODE_BITS))
    }

    pub fn from_value(v: u64) -> Option<Self> {
        (v >> CODE_BITS == 0).then_some(Self(v))
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// What a person types: case, spaces and dashes do not matter, and I, L (for 1) and O (for 0)
    /// are read as the digits they look like. `None` for anything else.
    pub fn parse(typed: &str) -> Option<Self> {
        if typed.len() > 64 {
            return None;
        }
        let mut v = 0u64;
        let mut n = 0;
        for c in typed.chars() {
            let c = match c.to_ascii_uppercase() {
                ' ' | '-' => continue,
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            };
            let digit = ALPHABET.iter().position(|&a| char::from(a) == c)?;
            v = (v << 5) | digit as u64;
            n += 1;
            if n > CODE_SYMBOLS {
                return None;
            }
        }
        (n == CODE_SYMBOLS).then_some(Self(v))
    }
}

impl std::fmt::Display for Code {
    /// Two groups of five symbols: `7K3QD-N9XWA`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in 0..CODE_SYMBOLS {
            if i == CODE_SYMBOLS / 2 {
                f.write_str("-")?;
            }
            let shift = 5 * (CODE_SYMBOLS - 1 - i);
            let digit = (self.0 >> shift) & 31;
            write!(f, "{}", char::from(ALPHABET[digit as usize]))?;
        }
        Ok(())
    }
}

/// HKDF `info` prefix of a device key.
pub const DEVICE_KEY_INFO: &[u8] = b"commucat device key v1";

/// The device's Ed25519 key: HKDF-SHA3-256 of the seed, no salt, `info` = [`DEVICE_KEY_INFO`] ‖
/// device id.
pub fn device_key(seed: &[u8; 32], device: &ClientId) -> ed25519::Keypair {
    let mut secret = [0u8; 32];
    SimpleHkdf::<Sha3_256>::new(None, seed)
        .expand(&[DEVICE_KEY_INFO, &device.0].concat(), &mut secret)
        .expect("32 bytes is a valid HKDF-SHA3-256 length");
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).expect("any 32 bytes");
    ed25519::Keypair::from(secret)
}

/// First bytes of what a device certificate signs.
pub const CERTIFICATE_CONTEXT: &[u8] = b"commucat device certificate v1";

/// A device certificate: the node's device CA vouches that `device_public` is device `device_id`
/// of node `node` until `expires_at` (`protocols/pairing-v1.md` §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub version: u8,
    pub device_id: ClientId,
    /// Ed25519, hex.
    pub device_public: String,
    pub node: PeerId,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
    /// Ed25519 by the device CA over [`signed_bytes`], hex.
    pub signature: String,
}

/// The bytes a certificate's signature covers.
pub fn signed_bytes(
    device_id: &ClientId,
    device_public: &[u8; 32],
    node: &PeerId,
    issued_at: u64,
    expires_at: u64,
) -> Vec<u8> {
    let node = node.to_bytes();
    let mut out = Vec::with_capacity(CERTIFICATE_CONTEXT.len() + 8 + 32 + 1 + node.len() + 16);
    out.extend_from_slice(CERTIFICATE_CONTEXT);
    out.extend_from_slice(&device_id.0);
    out.extend_from_slice(device_public);
    out.push(u8::try_from(node.len()).expect("peer ids are short"));
    out.extend_from_slice(&node);
    out.extend_from_slice(&issued_at.to_be_bytes());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out
}

impl Certificate {
    pub fn issue(
        ca: &ed25519::Keypair,
        device_id: ClientId,
        device_public: [u8; 32],
        node: PeerId,
        issued_at: u64,
        expires_at: u64,
    ) -> Self {
        let signed = signed_bytes(&device_id, &device_public, &node, issued_at, expires_at);
        Self {
            version: 1,
            device_id,
            device_public: hex::encode(device_public),
            node,
            issued_at,
            expires_at,
            signature: hex::encode(ca.sign(&signed)),
        }
    }

    /// Whether `ca_public` signed it (expiry is the caller's to check).
    pub fn verify(&self, ca_public: &ed25519::PublicKey) -> bool {
        let (Ok(key), Ok(sig)) = (
            hex::decode(&self.device_public),
            hex::decode(&self.signature),
        ) else {
            return false;
        };
        let Ok(key) = <[u8; 32]>::try_from(key) else {
            return false;
        };
        self.version == 1
            && ca_public.verify(
                &signed_bytes(
                    &self.device_id,
                    &key,
                    &self.node,
                    self.issued_at,
                    self.expires_at,
                ),
                &sig,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        code_value: u64,
        code: String,
        typed: Vec<String>,
        ca_secret: String,
        ca_public: String,
        device_seed: String,
        device_id: ClientId,
        device_private: String,
        device_public: String,
        node: PeerId,
        issued_at: u64,
        expires_at: u64,
        signed_bytes: String,
        signature: String,
    }

    fn vector() -> Vector {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocols/vectors/pairing-v1.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn keypair(secret_hex: &str) -> ed25519::Keypair {
        let mut b = hex::decode(secret_hex).unwrap();
        ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes(&mut b).unwrap())
    }

    #[test]
    fn codes_match_the_vector_and_forgive_what_people_mistype() {
        let v = vector();
        let code = Code::from_value(v.code_value).unwrap();
        assert_eq!(code.to_string(), v.code);
        for typed in &v.typed {
            assert_eq!(Code::parse(typed), Some(code), "{typed}");
        }
        for bad in [
            "",
            "7K3QD",
            "7K3QD-N9XWA-0",
            "7K3QD-N9XWU",
            "7K3QD_N9XWA",
            "ÄK3QD-N9XWA",
        ] {
            assert_eq!(Code::parse(bad), None, "{bad}");
        }
        assert!(Code::from_value(1 << CODE_BITS).is_none());
        for _ in 0..100 {
            let c = Code::random();
            assert_eq!(Code::parse(&c.to_string()), Some(c));
        }
    }

    proptest::proptest! {
        /// Whatever is typed (at the claim endpoint, by anyone): no panic, and what is accepted
        /// is a code that prints back as what was meant.
        #[test]
        fn any_text_is_a_code_or_not(typed in "\\PC{0,80}") {
            if let Some(code) = Code::parse(&typed) {
                proptest::prop_assert_eq!(Code::parse(&code.to_string()), Some(code));
                proptest::prop_assert!(code.value() >> CODE_BITS == 0);
            }
        }
    }

    #[test]
    fn device_keys_and_certificates_match_the_vector() {
        let v = vector();
        let ca = keypair(&v.ca_secret);
        assert_eq!(hex::encode(ca.public().to_bytes()), v.ca_public);
        let seed: [u8; 32] = hex::decode(&v.device_seed).unwrap().try_into().unwrap();
        let device = device_key(&seed, &v.device_id);
        assert_eq!(hex::encode(device.secret().as_ref()), v.device_private);
        assert_eq!(hex::encode(device.public().to_bytes()), v.device_public);
        let public = device.public().to_bytes();
        assert_eq!(
            hex::encode(signed_bytes(
                &v.device_id,
                &public,
                &v.node,
                v.issued_at,
                v.expires_at
            )),
            v.signed_bytes
        );
        let cert = Certificate::issue(&ca, v.device_id, public, v.node, v.issued_at, v.expires_at);
        assert_eq!(cert.signature, v.signature);
        assert!(cert.verify(&ca.public()));
        let mut forged = cert.clone();
        forged.expires_at += 1;
        assert!(
            !forged.verify(&ca.public()),
            "a changed field breaks the signature"
        );
        assert!(
            !cert.verify(&ed25519::Keypair::generate().public()),
            "another CA"
        );
    }
}
