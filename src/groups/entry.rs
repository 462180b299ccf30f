//! One entry of a group's membership log (`protocols/groups-v1.md` §2): what changed, who signed
//! it (with both identity keys, like DHT records), its number and the hash of the entry before it.

use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::GroupId;
use crate::{
    codec::Reader,
    identity::{self, Binding, Identity},
};

pub const VERSION: u8 = 1;
/// Signature context of log entries (Ed25519 prefix, ML-DSA-65 context).
pub const SIGNATURE_CONTEXT: &[u8] = b"commucat/group-entry/v1";
/// Bytes of a group name at most.
pub const MAX_NAME_BYTES: usize = 64;
/// Bytes of a PeerId at most.
pub const MAX_PEER_ID_BYTES: usize = 64;
/// An entry at most: version, group, seq, prev, op, subject, name, time, signer and its binding,
/// signatures.
pub const MAX_ENTRY_BYTES: usize = 1
    + 16
    + 8
    + 32
    + 1
    + 1
    + MAX_PEER_ID_BYTES
    + 1
    + MAX_NAME_BYTES
    + 8
    + 1
    + MAX_PEER_ID_BYTES
    + identity::ML_DSA_PUBLIC_KEY_LEN
    + 64
    + identity::ML_DSA_SIGNATURE_LEN
    + identity::SIGNATURES_LEN;

/// SHA-256 of an entry's bytes: how entries name each other.
pub type Hash = [u8; 32];

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The first entry: the signer makes the group and is its first member and admin.
    Create { name: String },
    /// An admin adds a member.
    Add(PeerId),
    /// An admin removes a member (an admin too).
    Remove(PeerId),
    /// The signer leaves.
    Leave,
    /// An admin makes a member an admin.
    Admin(PeerId),
}

impl Op {
    fn code(&self) -> u8 {
        match self {
            Op::Create { .. } => 1,
            Op::Add(_) => 2,
            Op::Remove(_) => 3,
            Op::Leave => 4,
            Op::Admin(_) => 5,
        }
    }

    /// The member it is about, if another than the signer.
    pub fn subject(&self) -> Option<&PeerId> {
        match self {
            Op::Add(p) | Op::Remove(p) | Op::Admin(p) => Some(p),
            Op::Create { .. } | Op::Leave => None,
        }
    }
}

/// Why an entry is not taken into a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed")]
    Malformed,
    #[error("bad_signature")]
    BadSignature,
    #[error("wrong_group")]
    WrongGroup,
    /// Its `prev` is no entry of the log with the number before its own.
    #[error("broken_chain")]
    BrokenChain,
    /// Signed by someone the log never made an admin.
    #[error("not_admin")]
    NotAdmin,
    /// A second `create`, or a `create` that is not entry 1.
    #[error("bad_create")]
    BadCreate,
    #[error("log_full")]
    LogFull,
}

impl From<crate::codec::Short> for Reject {
    fn from(_: crate::codec::Short) -> Self {
        Reject::Malformed
    }
}

/// A verified entry and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub group: GroupId,
    pub seq: u64,
    pub prev: Hash,
    pub op: Op,
    /// Unix milliseconds, as the signer's clock had it (shown, never trusted for order).
    pub created_at_ms: u64,
    pub signer: Binding,
    pub hash: Hash,
    bytes: Vec<u8>,
}

impl Entry {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Signs a new entry.
    pub fn sign(
        identity: &Identity,
        group: GroupId,
        seq: u64,
        prev: Hash,
        op: Op,
        created_at_ms: u64,
    ) -> Self {
        let mut body = Vec::with_capacity(MAX_ENTRY_BYTES);
        body.push(VERSION);
        body.extend_from_slice(&group.0);
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(&prev);
        body.push(op.code());
        let subject = op.subject().map(|p| p.to_bytes()).unwrap_or_default();
        push_short(&mut body, &subject);
        let name = match &op {
            Op::Create { name } => name.as_bytes(),
            _ => &[],
        };
        push_short(&mut body, &name[..name.len().min(MAX_NAME_BYTES)]);
        body.extend_from_slice(&created_at_ms.to_be_bytes());
        let b = identity.binding();
        push_short(&mut body, &b.peer_id.to_bytes());
        body.extend_from_slice(&b.ml_dsa_public);
        body.extend_from_slice(&b.ed25519_signature);
        body.extend_from_slice(&b.ml_dsa_signature);
        let sigs = identity.sign_record(SIGNATURE_CONTEXT, &group.0, &body);
        body.extend_from_slice(&sigs);
        Self::verify(&body).expect("an entry this node signed verifies")
    }

    /// Parses and checks an entry on its own (§3 rules 1–2): well formed, its signer's binding and
    /// both signatures good. Its place in a log is [`super::Log::admit`]'s to judge.
    pub fn verify(bytes: &[u8]) -> Result<Self, Reject> {
        if bytes.len() > MAX_ENTRY_BYTES || bytes.len() < identity::SIGNATURES_LEN {
            return Err(Reject::Malformed);
        }
        let (body, sigs) = bytes.split_at(bytes.len() - identity::SIGNATURES_LEN);
        let mut r = Reader(body);
        if r.u8()? != VERSION {
            return Err(Reject::Malformed);
        }
        let group = GroupId(r.array()?);
        let seq = r.u64()?;
        let prev: Hash = r.array()?;
        let code = r.u8()?;
        let subject = r.short_bytes()?;
        let name = r.short_bytes()?;
        let created_at_ms = r.u64()?;
        let signer = read_peer(r.short_bytes()?)?;
        let binding = Binding {
            peer_id: signer,
            ml_dsa_public: r.bytes(identity::ML_DSA_PUBLIC_KEY_LEN)?.to_vec(),
            ed25519_signature: r.bytes(64)?.to_vec(),
            ml_dsa_signature: r.bytes(identity::ML_DSA_SIGNATURE_LEN)?.to_vec(),
        };
        if !r.is_empty() {
            return Err(Reject::Malformed);
        }
        let op = match (code, subject.is_empty(), name.is_empty()) {
            (1, true, _) => Op::Create {
                name: std::str::from_utf8(name)
                    .map_err(|_| Reject::Malformed)?
                    .to_owned(),
            },
            (2, false, true) => Op::Add(read_peer(subject)?),
            (3, false, true) => Op::Remove(read_peer(subject)?),
            (4, true, true) => Op::Leave,
            (5, false, true) => Op::Admin(read_peer(subject)?),
            _ => return Err(Reject::Malformed),
        };
        binding.verify().map_err(|_| Reject::BadSignature)?;
        let vk = binding.ml_dsa_verifying_key().ok_or(Reject::BadSignature)?;
        if !identity::verify_record(&signer, &vk, SIGNATURE_CONTEXT, &group.0, body, sigs) {
            return Err(Reject::BadSignature);
        }
        Ok(Self {
            group,
            seq,
            prev,
            op,
            created_at_ms,
            signer: binding,
            hash: Sha256::digest(bytes).into(),
            bytes: bytes.to_vec(),
        })
    }
}

fn push_short(out: &mut Vec<u8>, b: &[u8]) {
    out.push(u8::try_from(b.len()).expect("short fields are at most 255 bytes"));
    out.extend_from_slice(b);
}

fn read_peer(b: &[u8]) -> Result<PeerId, Reject> {
    if b.len() > MAX_PEER_ID_BYTES {
        return Err(Reject::Malformed);
    }
    PeerId::from_bytes(b).map_err(|_| Reject::Malformed)
}
