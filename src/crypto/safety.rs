//! Safety numbers (`protocols/contacts-v1.md` §2): 60 digits two people compare — read aloud or
//! as a QR code — to know that each holds the other's real keys. Computed from both identities'
//! Ed25519 and ML-DSA-65 public keys, the same on both sides, Signal's numeric fingerprint with
//! the post-quantum key hashed in.

use sha2::{Digest, Sha512};

use crate::identity::{self, Binding};

pub const VERSION: u16 = 1;
/// Rounds of SHA-512 per party: the cost of searching for a key with a colliding half.
pub const ITERATIONS: usize = 5200;
/// Digits per party; the number has twice as many.
pub const DIGITS_PER_PARTY: usize = 30;

/// One party's 30 digits: `ITERATIONS` rounds of SHA-512 over its keys, the first 30 bytes read as
/// six 40-bit big-endian numbers, each mod 100 000, written with 5 digits.
fn half(binding: &Binding) -> Option<String> {
    let ed = identity::public_key_of(&binding.peer_id)?
        .try_into_ed25519()
        .ok()?
        .to_bytes();
    let keys = [&ed[..], &binding.ml_dsa_public].concat();
    let mut h = Sha512::new()
        .chain_update(VERSION.to_be_bytes())
        .chain_update(&keys)
        .chain_update(binding.peer_id.to_bytes())
        .finalize();
    for _ in 0..ITERATIONS {
        h = Sha512::new().chain_update(h).chain_update(&keys).finalize();
    }
    Some(
        h[..30]
            .chunks(5)
            .map(|c| {
                let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                format!("{:05}", n % 100_000)
            })
            .collect(),
    )
}

/// The safety number of two identities, as 12 groups of 5 digits; the same whichever is `a`.
/// `None` when a PeerId does not carry an Ed25519 key (no CommuCat identity does).
pub fn safety_number(a: &Binding, b: &Binding) -> Option<String> {
    let (mut x, mut y) = (half(a)?, half(b)?);
    if y < x {
        std::mem::swap(&mut x, &mut y);
    }
    let digits = x + &y;
    Some(
        digits
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).expect("digits"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn both_sides_see_the_same_number_and_another_key_changes_it() {
        let (alice, bob, mallory) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let ab = safety_number(alice.binding(), bob.binding()).unwrap();
        assert_eq!(ab, safety_number(bob.binding(), alice.binding()).unwrap());
        assert_eq!(ab.len(), 60 + 11);
        assert!(
            ab.split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|d| d.is_ascii_digit()))
        );
        assert_ne!(
            ab,
            safety_number(alice.binding(), mallory.binding()).unwrap()
        );
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        a_seed: String,
        b_seed: String,
        safety_number: String,
    }

    fn identity(seed: &str) -> Identity {
        let bytes = hex::decode(seed).unwrap();
        Identity::from_secrets(
            bytes[..32].try_into().unwrap(),
            bytes[32..].try_into().unwrap(),
        )
    }

    #[test]
    fn spec_vector() {
        let v: Vector =
            serde_json::from_str(include_str!("../../protocols/vectors/contacts-v1.json")).unwrap();
        let (a, b) = (identity(&v.a_seed), identity(&v.b_seed));
        assert_eq!(
            safety_number(a.binding(), b.binding()).unwrap(),
            v.safety_number
        );
    }

    #[test]
    #[ignore = "prints the vector; run by hand after a deliberate format change"]
    fn print_vector() {
        let seed = |start: u8| -> String {
            hex::encode(
                (0..64)
                    .map(|i: u8| start.wrapping_add(i))
                    .collect::<Vec<_>>(),
            )
        };
        let (sa, sb) = (seed(0x00), seed(0x40));
        let (a, b) = (identity(&sa), identity(&sb));
        println!(
            "VECTOR {}",
            serde_json::json!({
                "description": "protocols/contacts-v1.md §2: the safety number of two identities made from the given secrets (Ed25519 secret ‖ ML-DSA-65 seed, 32 bytes each).",
                "a_seed": sa,
                "a_peer_id": a.peer_id().to_string(),
                "a_peer_id_bytes": hex::encode(a.peer_id().to_bytes()),
                "a_ml_dsa_public": hex::encode(&a.binding().ml_dsa_public),
                "b_seed": sb,
                "b_peer_id": b.peer_id().to_string(),
                "b_peer_id_bytes": hex::encode(b.peer_id().to_bytes()),
                "b_ml_dsa_public": hex::encode(&b.binding().ml_dsa_public),
                "safety_number": safety_number(a.binding(), b.binding()).unwrap(),
            })
        );
    }
}
