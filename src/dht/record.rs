//! Signed presence records (`protocols/dht-records-v1.md`; name records are [`super::name`]): a node's addresses and key bundle under
//! `/commucat/presence/<peer-id>`, signed with its Ed25519 and ML-DSA-65 keys; and the validation
//! every node applies before it stores or believes one.

use libp2p::{Multiaddr, PeerId, kad::RecordKey};
use ml_dsa::MlDsa65;

use crate::{
    crypto::{Bundle, bundle},
    identity::{self, Identity},
};

pub const KEY_PREFIX: &[u8] = b"/commucat/presence/";
pub const VERSION: u8 = 1;
pub const MAX_RECORD_ADDRS: usize = 16;
pub const MAX_ADDR_LEN: usize = 256;
pub const MAX_RECORD_BYTES: usize = 16_384;
/// Furthest in the future a record may expire.
pub const MAX_TTL_SECS: u64 = 24 * 3600;
pub const SIGNATURE_CONTEXT: &[u8] = b"commucat/presence/v1";
const SIGS_LEN: usize = 64 + identity::ML_DSA_SIGNATURE_LEN;

/// Why a record is refused (the metric label of `commucat_dht_records_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("malformed")]
    Malformed,
    #[error("bad_bundle")]
    BadBundle,
    #[error("bad_signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("stale")]
    Stale,
    #[error("equivocation")]
    Equivocation,
    #[error("overload")]
    Overload,
    /// A name record for a handle another key holds (`names-v1.md` rule 6).
    #[error("taken")]
    Taken,
    /// A name record whose handle is not in normal form.
    #[error("unnormalised")]
    Unnormalised,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::BadBundle => "bad_bundle",
            Reject::BadSignature => "bad_signature",
            Reject::Expired => "expired",
            Reject::Stale => "stale",
            Reject::Equivocation => "equivocation",
            Reject::Overload => "overload",
            Reject::Taken => "taken",
            Reject::Unnormalised => "unnormalised",
        }
    }
}

/// A verified presence record.
#[derive(Debug, Clone)]
pub struct Presence {
    pub peer: PeerId,
    pub seq: u64,
    pub expires_at: u64,
    pub addrs: Vec<Multiaddr>,
    pub bundle: Bundle,
}

pub fn key(peer: &PeerId) -> RecordKey {
    RecordKey::new(&[KEY_PREFIX, &peer.to_bytes()[..]].concat())
}

/// The PeerId a presence key is about.
pub fn peer_of_key(key: &[u8]) -> Option<PeerId> {
    let peer = PeerId::from_bytes(key.strip_prefix(KEY_PREFIX)?).ok()?;
    identity::public_key_of(&peer)?;
    Some(peer)
}

/// Builds and signs the presence record of `identity` (its bundle `keys`).
pub fn sign(
    identity: &Identity,
    keys: &bundle::Keys,
    seq: u64,
    expires_at: u64,
    addrs: &[Multiaddr],
) -> Vec<u8> {
    let k = key(&identity.peer_id());
    let mut body = Vec::with_capacity(MAX_RECORD_BYTES);
    body.push(VERSION);
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&expires_at.to_be_bytes());
    let addrs: Vec<Vec<u8>> = addrs
        .iter()
        .map(|a| a.to_vec())
        .filter(|a| a.len() <= MAX_ADDR_LEN)
        .take(MAX_RECORD_ADDRS)
        .collect();
    body.push(u8::try_from(addrs.len()).expect("at most 16"));
    for a in &addrs {
        body.extend_from_slice(&u16::try_from(a.len()).expect("at most 256").to_be_bytes());
        body.extend_from_slice(a);
    }
    let b = keys.bundle().as_bytes();
    body.extend_from_slice(
        &u16::try_from(b.len())
            .expect("bundles are 9923 bytes")
            .to_be_bytes(),
    );
    body.extend_from_slice(b);
    let sigs = identity.sign_record(SIGNATURE_CONTEXT, k.as_ref(), &body);
    body.extend_from_slice(&sigs);
    body
}

/// Validation rules 1–5 of the spec (rule 6, freshness, needs the stored record: [`replaces`]).
pub fn verify(key: &[u8], value: &[u8], now: u64) -> Result<Presence, Reject> {
    let peer = peer_of_key(key).ok_or(Reject::Malformed)?;
    if value.len() > MAX_RECORD_BYTES || value.len() < SIGS_LEN {
        return Err(Reject::Malformed);
    }
    let (body, sigs) = value.split_at(value.len() - SIGS_LEN);
    let mut r = Reader(body);
    if r.u8()? != VERSION {
        return Err(Reject::Malformed);
    }
    let seq = r.u64()?;
    let expires_at = r.u64()?;
    let count = usize::from(r.u8()?);
    if count > MAX_RECORD_ADDRS {
        return Err(Reject::Malformed);
    }
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        if len > MAX_ADDR_LEN {
            return Err(Reject::Malformed);
        }
        addrs.push(Multiaddr::try_from(r.bytes(len)?.to_vec()).map_err(|_| Reject::Malformed)?);
    }
    let bundle_len = usize::from(r.u16()?);
    let bundle_bytes = r.bytes(bundle_len)?;
    if !r.0.is_empty() {
        return Err(Reject::Malformed);
    }
    let bundle = Bundle::verify(bundle_bytes, &peer).map_err(|_| Reject::BadBundle)?;
    let vk = bundle
        .binding()
        .ml_dsa_verifying_key()
        .ok_or(Reject::BadBundle)?;
    check_signed(SIGNATURE_CONTEXT, key, body, sigs, &peer, &vk)?;
    check_lifetime(expires_at, now, MAX_TTL_SECS)?;
    Ok(Presence {
        peer,
        seq,
        expires_at,
        addrs,
        bundle,
    })
}

/// Both signatures of a record (presence or name): `sigs`, Ed25519 then ML-DSA-65, over `key ‖
/// body` in `context`, under `peer`'s Ed25519 key and its bound ML-DSA-65 key `vk`.
pub(super) fn check_signed(
    context: &[u8],
    key: &[u8],
    body: &[u8],
    sigs: &[u8],
    peer: &PeerId,
    vk: &ml_dsa::VerifyingKey<MlDsa65>,
) -> Result<(), Reject> {
    match identity::verify_record(peer, vk, context, key, body, sigs) {
        true => Ok(()),
        false => Err(Reject::BadSignature),
    }
}

/// A record's lifetime at `now`: not over, and not further ahead than `max_ttl`.
pub(super) fn check_lifetime(expires_at: u64, now: u64, max_ttl: u64) -> Result<(), Reject> {
    if expires_at <= now || expires_at > now.saturating_add(max_ttl) {
        return Err(Reject::Expired);
    }
    Ok(())
}

/// The sequence number of a value (without verifying it: for values already verified and stored).
pub fn seq_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(1..9)?.try_into().ok()?))
}

/// Rule 6: does a verified `new` value with sequence `new_seq` replace the `current` one?
/// `Ok(false)`: identical republication, nothing to do.
pub fn replaces(current: Option<&[u8]>, new_value: &[u8], new_seq: u64) -> Result<bool, Reject> {
    let Some(current) = current else {
        return Ok(true);
    };
    let current_seq = seq_of(current).unwrap_or(0);
    match new_seq.cmp(&current_seq) {
        std::cmp::Ordering::Greater => Ok(true),
        std::cmp::Ordering::Less => Err(Reject::Stale),
        std::cmp::Ordering::Equal if current == new_value => Ok(false),
        std::cmp::Ordering::Equal => Err(Reject::Equivocation),
    }
}

/// Reads a record's fields in order; running short is [`Reject::Malformed`].
pub(super) use crate::codec::Reader;

impl From<crate::codec::Short> for Reject {
    fn from(_: crate::codec::Short) -> Self {
        Reject::Malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (Identity, bundle::Keys) {
        let id = Identity::generate();
        let keys = bundle::Keys::generate(&id);
        (id, keys)
    }

    fn addrs() -> Vec<Multiaddr> {
        vec![
            "/ip4/192.0.2.1/tcp/4001".parse().unwrap(),
            "/ip4/192.0.2.1/udp/4001/quic-v1".parse().unwrap(),
        ]
    }

    #[test]
    fn genuine_records_verify_and_forgeries_do_not() {
        let (alice, ak) = node();
        let (mallory, mk) = node();
        let now = 1_000_000;
        let k = key(&alice.peer_id());
        let value = sign(&alice, &ak, 5, now + 3600, &addrs());
        assert!(value.len() < MAX_RECORD_BYTES, "{} bytes", value.len());
        let p = verify(k.as_ref(), &value, now).unwrap();
        assert_eq!(
            (p.peer, p.seq, p.addrs.clone()),
            (alice.peer_id(), 5, addrs())
        );

        // Mallory's record under Alice's key: Mallory's bundle does not verify for Alice.
        let forged = sign(&mallory, &mk, 6, now + 3600, &addrs());
        assert_eq!(
            verify(k.as_ref(), &forged, now).unwrap_err(),
            Reject::BadBundle
        );
        // Alice's record with a changed address: signatures break.
        let mut tampered = value.clone();
        tampered[30] ^= 1;
        assert!(matches!(
            verify(k.as_ref(), &tampered, now),
            Err(Reject::BadSignature | Reject::Malformed)
        ));
        // Expired, and absurdly far in the future.
        assert_eq!(
            verify(k.as_ref(), &value, now + 3600).unwrap_err(),
            Reject::Expired
        );
        let far = sign(&alice, &ak, 7, now + MAX_TTL_SECS + 10, &addrs());
        assert_eq!(verify(k.as_ref(), &far, now).unwrap_err(), Reject::Expired);
        // Wrong key, garbage.
        assert_eq!(
            verify(b"/other/key", &value, now).unwrap_err(),
            Reject::Malformed
        );
        assert_eq!(
            verify(k.as_ref(), &value[..200], now).unwrap_err(),
            Reject::Malformed
        );
    }

    #[test]
    fn only_newer_records_replace_stored_ones() {
        let (alice, ak) = node();
        let v5 = sign(&alice, &ak, 5, 10_000, &addrs());
        let v6 = sign(&alice, &ak, 6, 10_000, &addrs());
        let v5b = sign(&alice, &ak, 5, 10_001, &addrs());
        assert_eq!(replaces(None, &v5, 5), Ok(true));
        assert_eq!(replaces(Some(&v5), &v6, 6), Ok(true));
        assert_eq!(replaces(Some(&v6), &v5, 5), Err(Reject::Stale));
        assert_eq!(replaces(Some(&v5), &v5, 5), Ok(false));
        assert_eq!(replaces(Some(&v5), &v5b, 5), Err(Reject::Equivocation));
    }

    fn vector_inputs() -> (Identity, bundle::Keys, u64, u64, Vec<Multiaddr>) {
        let seed = |start: u8, n: usize| -> Vec<u8> {
            (0..n).map(|i| start.wrapping_add(i as u8)).collect()
        };
        let id = Identity::from_secrets(
            seed(0x00, 32).try_into().unwrap(),
            seed(0x20, 32).try_into().unwrap(),
        );
        let keys = bundle::Keys::from_secrets(
            &id,
            1_700_000_000,
            seed(0x80, 32).try_into().unwrap(),
            seed(0x90, 64).try_into().unwrap(),
        );
        (id, keys, 1_700_000_000_000, 1_700_003_600, addrs())
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        key: String,
        value: String,
        verify_at: u64,
    }

    #[test]
    fn spec_vector_reproduces_byte_for_byte() {
        let v: Vector =
            serde_json::from_str(include_str!("../../protocols/vectors/dht-records-v1.json"))
                .unwrap();
        let (id, keys, seq, expires_at, addrs) = vector_inputs();
        assert_eq!(hex::encode(key(&id.peer_id()).as_ref()), v.key);
        assert_eq!(
            hex::encode(sign(&id, &keys, seq, expires_at, &addrs)),
            v.value
        );
        let p = verify(
            &hex::decode(&v.key).unwrap(),
            &hex::decode(&v.value).unwrap(),
            v.verify_at,
        )
        .unwrap();
        assert_eq!((p.seq, p.expires_at, p.addrs), (seq, expires_at, addrs));
    }

    #[test]
    #[ignore = "prints the vector; run by hand after a deliberate format change"]
    fn print_vector() {
        let (id, keys, seq, expires_at, addrs) = vector_inputs();
        println!(
            "VECTOR {}",
            serde_json::json!({
                "description": "protocols/dht-records-v1.md presence record of the identity-v1 vector identity (bundle as in data-v1-session.json's initiator), seq 1700000000000, expires_at 1700003600, two addresses.",
                "peer_id": id.peer_id().to_string(),
                "seq": seq,
                "expires_at": expires_at,
                "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "verify_at": 1_700_000_000u64,
                "key": hex::encode(key(&id.peer_id()).as_ref()),
                "value": hex::encode(sign(&id, &keys, seq, expires_at, &addrs)),
            })
        );
    }
}
