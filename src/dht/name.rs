//! Signed name records (`protocols/names-v1.md`): a handle mapped to a PeerId and its ML-DSA-65
//! key under `/commucat/name/<skeleton>`, signed with both identity keys; and the rules every node
//! applies before it stores one, including the conflict rule (a name held by a live record is
//! refused to any other key until that record expires or is released).

use libp2p::{PeerId, kad::RecordKey};

use super::record::{Reader, Reject, check_lifetime, check_signed};
use crate::{
    identity::{self, Binding, Identity},
    names::Handle,
};

pub const KEY_PREFIX: &[u8] = b"/commucat/name/";
pub const VERSION: u8 = 1;
pub const SIGNATURE_CONTEXT: &[u8] = b"commucat/name/v1";
/// Flag bit: the owner gave the name up; the record holds it for nobody.
pub const FLAG_RELEASED: u8 = 1;
/// Furthest in the future a record may expire (the owner republishes well before).
pub const MAX_TTL_SECS: u64 = 24 * 3600;
/// Longest PeerId in a record (an identity multihash of an Ed25519 key is 38 bytes).
pub const MAX_PEER_ID_BYTES: usize = 64;
const SIGS_LEN: usize = 64 + identity::ML_DSA_SIGNATURE_LEN;
const BINDING_LEN: usize = identity::ML_DSA_PUBLIC_KEY_LEN + 64 + identity::ML_DSA_SIGNATURE_LEN;
/// Largest value: header, a 32-byte handle, a long PeerId, the binding, the signatures.
pub const MAX_RECORD_BYTES: usize =
    1 + 1 + 8 + 8 + 1 + 32 + 1 + MAX_PEER_ID_BYTES + BINDING_LEN + SIGS_LEN;

/// A verified name record.
#[derive(Debug, Clone)]
pub struct Name {
    pub handle: Handle,
    pub peer: PeerId,
    /// The owner's identity binding (its ML-DSA-65 public key, bound to `peer`).
    pub binding: Binding,
    pub seq: u64,
    pub expires_at: u64,
    pub released: bool,
}

impl Name {
    /// Holds its handle at `now`: live and not released.
    pub fn holds(&self, now: u64) -> bool {
        !self.released && self.expires_at > now
    }
}

/// The DHT key of `handle`: its look-alike skeleton.
pub fn key(handle: &Handle) -> RecordKey {
    RecordKey::new(&[KEY_PREFIX, handle.skeleton().as_bytes()].concat())
}

pub fn is_name_key(key: &[u8]) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// Builds and signs the record of `identity` for `handle`.
pub fn sign(
    identity: &Identity,
    handle: &Handle,
    seq: u64,
    expires_at: u64,
    released: bool,
) -> Vec<u8> {
    let fields = Fields {
        handle: handle.as_str(),
        seq,
        expires_at,
        flags: if released { FLAG_RELEASED } else { 0 },
    };
    sign_fields(identity, key(handle).as_ref(), &fields)
}

/// What a record says besides its owner.
struct Fields<'a> {
    handle: &'a str,
    seq: u64,
    expires_at: u64,
    flags: u8,
}

/// Signs `fields` under `key` as they are (tests build malformed records with it).
fn sign_fields(identity: &Identity, key: &[u8], fields: &Fields) -> Vec<u8> {
    let peer = identity.peer_id().to_bytes();
    let b = identity.binding();
    let mut body = Vec::with_capacity(MAX_RECORD_BYTES);
    body.push(VERSION);
    body.push(fields.flags);
    body.extend_from_slice(&fields.seq.to_be_bytes());
    body.extend_from_slice(&fields.expires_at.to_be_bytes());
    body.push(u8::try_from(fields.handle.len()).expect("handles are short"));
    body.extend_from_slice(fields.handle.as_bytes());
    body.push(u8::try_from(peer.len()).expect("a PeerId is short"));
    body.extend_from_slice(&peer);
    body.extend_from_slice(&b.ml_dsa_public);
    body.extend_from_slice(&b.ed25519_signature);
    body.extend_from_slice(&b.ml_dsa_signature);
    let sigs = identity.sign_record(SIGNATURE_CONTEXT, key, &body);
    body.extend_from_slice(&sigs);
    body
}

/// Rules 1–5 of the spec: the record is well formed, its handle normalised and stored under its
/// own key, the binding and both signatures check out, and it has not expired.
pub fn verify(key: &[u8], value: &[u8], now: u64) -> Result<Name, Reject> {
    if !is_name_key(key) || value.len() > MAX_RECORD_BYTES || value.len() < SIGS_LEN {
        return Err(Reject::Malformed);
    }
    let (body, sigs) = value.split_at(value.len() - SIGS_LEN);
    let mut r = Reader(body);
    if r.u8()? != VERSION {
        return Err(Reject::Malformed);
    }
    let flags = r.u8()?;
    if flags & !FLAG_RELEASED != 0 {
        return Err(Reject::Malformed);
    }
    let seq = r.u64()?;
    let expires_at = r.u64()?;
    let handle_len = usize::from(r.u8()?);
    let text = std::str::from_utf8(r.bytes(handle_len)?).map_err(|_| Reject::Malformed)?;
    let handle = Handle::parse(text).map_err(|_| Reject::Unnormalised)?;
    if handle.as_str() != text {
        return Err(Reject::Unnormalised);
    }
    if self::key(&handle).as_ref() != key {
        return Err(Reject::Malformed);
    }
    let peer_len = usize::from(r.u8()?);
    if peer_len > MAX_PEER_ID_BYTES {
        return Err(Reject::Malformed);
    }
    let peer = PeerId::from_bytes(r.bytes(peer_len)?).map_err(|_| Reject::Malformed)?;
    let binding = Binding {
        peer_id: peer,
        ml_dsa_public: r.bytes(identity::ML_DSA_PUBLIC_KEY_LEN)?.to_vec(),
        ed25519_signature: r.bytes(64)?.to_vec(),
        ml_dsa_signature: r.bytes(identity::ML_DSA_SIGNATURE_LEN)?.to_vec(),
    };
    if !r.0.is_empty() {
        return Err(Reject::Malformed);
    }
    binding.verify().map_err(|_| Reject::BadSignature)?;
    let vk = binding.ml_dsa_verifying_key().ok_or(Reject::BadSignature)?;
    check_signed(SIGNATURE_CONTEXT, key, body, sigs, &peer, &vk)?;
    check_lifetime(expires_at, now, MAX_TTL_SECS)?;
    Ok(Name {
        handle,
        peer,
        binding,
        seq,
        expires_at,
        released: flags & FLAG_RELEASED != 0,
    })
}

/// Rule 6, with the stored record `current` (verified when it was stored) and the raw values:
/// does verified `new` replace it? `Ok(false)`: the same record again, nothing to do.
///
/// A record that holds its name (live, not released) is replaced only by its owner's newer
/// record; any other key gets [`Reject::Taken`]. An expired or released one is replaced by any.
pub fn admits(
    current: Option<(&Name, &[u8])>,
    new: &Name,
    new_value: &[u8],
    now: u64,
) -> Result<bool, Reject> {
    let Some((current, current_value)) = current else {
        return Ok(true);
    };
    if current.peer != new.peer {
        return match current.holds(now) {
            true => Err(Reject::Taken),
            false => Ok(true),
        };
    }
    match new.seq.cmp(&current.seq) {
        std::cmp::Ordering::Greater => Ok(true),
        std::cmp::Ordering::Less => Err(Reject::Stale),
        std::cmp::Ordering::Equal if current_value == new_value => Ok(false),
        std::cmp::Ordering::Equal => Err(Reject::Equivocation),
    }
}

#[cfg(test)]
mod tests;
