//! Inner frames: what SEALED frames carry once opened (`protocols/data-v1.md` §2): AUTH, DATA and
//! DATA_VIA, ACK, RESYNC, the file-transfer frames, PRESENCE, PING/PONG, CLOSE and ERROR; and
//! FINISHED, KEY_UPDATE, KEY_REPLY and KEY_DONE of version 2 (`protocols/data-v2.md` §2).

use bytes::{BufMut, Bytes};

use super::{
    ClientId, Cursor, DecodeError, ErrorCode, MAX_ERROR_MESSAGE, MAX_FILE_NAME, MAX_MESSAGE_BYTES,
    Via, decode_error_payload, kind, put_text,
};
use crate::{
    crypto::bundle::{KEM_CT_LEN, KEM_EK_LEN},
    identity::{ML_DSA_PUBLIC_KEY_LEN, ML_DSA_SIGNATURE_LEN},
};

/// The identity binding an initiator sends in AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingParts {
    pub ml_dsa_public: Bytes,
    pub ed25519_signature: Bytes,
    pub ml_dsa_signature: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub epoch: u64,
    pub seq: u64,
    pub msg_id: [u8; 16],
    pub sent_at_ms: u64,
    /// The light clients it names, if any (then sent as DATA_VIA).
    pub via: Via,
    /// The group it belongs to, if any (then sent as DATA_GROUP; never with `via`).
    pub group: Option<GroupTag>,
    pub body: String,
}

/// What DATA_GROUP adds to DATA (`protocols/data-v1.md` §DATA_GROUP, `groups-v1.md` §6, §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupTag {
    #[serde(with = "hex::serde")]
    pub group: [u8; 16],
    /// [`group_kind`]: a message, log entries, a sync request, a head.
    pub kind: u8,
    /// The sender's number for its messages in this group (0 for the other kinds).
    pub sender_seq: u64,
    /// The sender's log head when it sent this: highest entry number and digest.
    pub head_seq: u64,
    #[serde(with = "hex::serde")]
    pub head_digest: [u8; 32],
}

/// What a DATA_GROUP body is.
pub mod group_kind {
    /// Text for the group's members.
    pub const MESSAGE: u8 = 1;
    /// Log entries, hex, one per line.
    pub const ENTRIES: u8 = 2;
    /// "Send me what I lack": the hashes of the entries the sender holds, hex, one per line.
    pub const SYNC: u8 = 3;
    /// Only the head (empty body): "compare with yours".
    pub const HEAD: u8 = 4;
    pub const MAX: u8 = HEAD;
}

/// DATA_VIA flag bits.
pub mod via {
    pub const FROM_CLIENT: u8 = 1;
    pub const TO_CLIENT: u8 = 2;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub transfer_id: [u8; 16],
    pub size: u64,
    pub hash_alg: u8,
    pub hash: [u8; 32],
    pub block_size: u32,
    pub symbol_size: u16,
    pub repair_per_mille: u16,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    pub transfer_id: [u8; 16],
    pub block: u32,
    pub packets: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub transfer_id: [u8; 16],
    pub state: u8,
    pub error: u16,
    pub blocks: u32,
    pub bitmap: Bytes,
}

/// FILE_STATUS states.
pub mod file_state {
    pub const RECEIVING: u8 = 0;
    pub const COMPLETE: u8 = 1;
    pub const FAILED: u8 = 2;
}

/// A frame inside SEALED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inner {
    Auth {
        binding: Option<BindingParts>,
        signature: Bytes,
    },
    Data(Data),
    Ack {
        epoch: u64,
        seq: u64,
    },
    /// The receiver lost messages it had acknowledged (its store was damaged and it started
    /// anyway): send again from `next_seq` of `epoch` (§5.1).
    Resync {
        epoch: u64,
        next_seq: u64,
    },
    FileMeta(FileMeta),
    FileChunk(FileChunk),
    FileStatus(FileStatus),
    Presence {
        status: u8,
        since: u64,
    },
    Ping(u64),
    Pong(u64),
    Close(u16),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Version 2: the first sealed frame of each side; that it decrypts confirms the keys.
    Finished,
    /// Version 2, initiator: a fresh ML-KEM-768 encapsulation key for the next session keys.
    KeyUpdate {
        ek: Bytes,
    },
    /// Version 2, responder: the ciphertext to the KEY_UPDATE's key; the responder sends under the
    /// new keys from the next frame on.
    KeyReply {
        ct: Bytes,
    },
    /// Version 2, initiator: it sends under the new keys from the next frame on.
    KeyDone,
}

impl Inner {
    /// Appends `inner_type ‖ payload` to `out` (what SEALED encrypts).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Inner::Auth { binding, signature } => {
                out.push(kind::AUTH);
                out.push(u8::from(binding.is_some()));
                if let Some(b) = binding {
                    out.extend_from_slice(&b.ml_dsa_public);
                    out.extend_from_slice(&b.ed25519_signature);
                    out.extend_from_slice(&b.ml_dsa_signature);
                }
                out.extend_from_slice(signature);
            }
            Inner::Data(d) => {
                let flags = d.via.from_client.map_or(0, |_| via::FROM_CLIENT)
                    | d.via.to_client.map_or(0, |_| via::TO_CLIENT);
                out.push(match (&d.group, flags) {
                    (Some(_), _) => kind::DATA_GROUP,
                    (None, 0) => kind::DATA,
                    (None, _) => kind::DATA_VIA,
                });
                out.put_u64(d.epoch);
                out.put_u64(d.seq);
                out.extend_from_slice(&d.msg_id);
                out.put_u64(d.sent_at_ms);
                if let Some(g) = &d.group {
                    out.extend_from_slice(&g.group);
                    out.push(g.kind);
                    out.put_u64(g.sender_seq);
                    out.put_u64(g.head_seq);
                    out.extend_from_slice(&g.head_digest);
                } else if flags != 0 {
                    out.push(flags);
                    for id in [d.via.from_client, d.via.to_client].into_iter().flatten() {
                        out.extend_from_slice(&id.0);
                    }
                }
                out.extend_from_slice(d.body.as_bytes());
            }
            Inner::Ack { epoch, seq } => {
                out.push(kind::ACK);
                out.put_u64(*epoch);
                out.put_u64(*seq);
            }
            Inner::Resync { epoch, next_seq } => {
                out.push(kind::RESYNC);
                out.put_u64(*epoch);
                out.put_u64(*next_seq);
            }
            Inner::FileMeta(m) => {
                out.push(kind::FILE_META);
                out.extend_from_slice(&m.transfer_id);
                out.put_u64(m.size);
                out.push(m.hash_alg);
                out.extend_from_slice(&m.hash);
                out.put_u32(m.block_size);
                out.put_u16(m.symbol_size);
                out.put_u16(m.repair_per_mille);
                put_text(out, &m.name, MAX_FILE_NAME);
            }
            Inner::FileChunk(c) => {
                out.push(kind::FILE_CHUNK);
                out.extend_from_slice(&c.transfer_id);
                out.put_u32(c.block);
                out.extend_from_slice(&c.packets);
            }
            Inner::FileStatus(s) => {
                out.push(kind::FILE_STATUS);
                out.extend_from_slice(&s.transfer_id);
                out.push(s.state);
                out.put_u16(s.error);
                out.put_u32(s.blocks);
                out.extend_from_slice(&s.bitmap);
            }
            Inner::Presence { status, since } => {
                out.push(kind::PRESENCE);
                out.push(*status);
                out.put_u64(*since);
            }
            Inner::Ping(n) => {
                out.push(kind::PING);
                out.put_u64(*n);
            }
            Inner::Pong(n) => {
                out.push(kind::PONG);
                out.put_u64(*n);
            }
            Inner::Close(code) => {
                out.push(kind::CLOSE);
                out.put_u16(*code);
            }
            Inner::Error { code, message } => {
                out.push(kind::ERROR);
                out.put_u16(code.0);
                put_text(out, message, MAX_ERROR_MESSAGE);
            }
            Inner::Finished | Inner::KeyUpdate { .. } | Inner::KeyReply { .. } | Inner::KeyDone => {
                self.encode_keys(out);
            }
        }
    }

    /// The session's own frames of version 2: FINISHED and the key update.
    fn encode_keys(&self, out: &mut Vec<u8>) {
        match self {
            Inner::Finished => out.push(kind::FINISHED),
            Inner::KeyUpdate { ek } => {
                out.push(kind::KEY_UPDATE);
                out.extend_from_slice(ek);
            }
            Inner::KeyReply { ct } => {
                out.push(kind::KEY_REPLY);
                out.extend_from_slice(ct);
            }
            Inner::KeyDone => out.push(kind::KEY_DONE),
            _ => unreachable!("encode_keys is called for the key frames only"),
        }
    }

    /// Parses a decrypted inner frame (payloads are copied out).
    pub fn decode(bytes: &[u8]) -> Result<Inner, DecodeError> {
        Self::decode_with(bytes, Bytes::copy_from_slice)
    }

    /// Parses a decrypted inner frame whose payloads stay slices of `bytes` (no copy).
    pub fn decode_shared(bytes: &Bytes) -> Result<Inner, DecodeError> {
        Self::decode_with(bytes, |sub| bytes.slice_ref(sub))
    }

    fn decode_with(bytes: &[u8], share: impl Fn(&[u8]) -> Bytes) -> Result<Inner, DecodeError> {
        let mut c = Cursor(bytes);
        let ty = c.u8()?;
        let inner = match ty {
            kind::AUTH => decode_auth(&mut c, &share)?,
            kind::DATA | kind::DATA_VIA | kind::DATA_GROUP => Inner::Data(decode_data(ty, &mut c)?),
            kind::ACK => {
                let epoch = c.u64()?;
                let seq = c.u64()?;
                c.end()?;
                Inner::Ack { epoch, seq }
            }
            kind::RESYNC => {
                let epoch = c.u64()?;
                let next_seq = c.u64()?;
                c.end()?;
                Inner::Resync { epoch, next_seq }
            }
            kind::FILE_META => Inner::FileMeta(decode_file_meta(&mut c)?),
            kind::FILE_CHUNK => {
                let transfer_id = c.array()?;
                let block = c.u32()?;
                Inner::FileChunk(FileChunk {
                    transfer_id,
                    block,
                    packets: share(c.rest()),
                })
            }
            kind::FILE_STATUS => Inner::FileStatus(decode_file_status(&mut c, &share)?),
            kind::PRESENCE => {
                let status = c.u8()?;
                let since = c.u64()?;
                c.end()?;
                Inner::Presence { status, since }
            }
            kind::PING => {
                let n = c.u64()?;
                c.end()?;
                Inner::Ping(n)
            }
            kind::PONG => {
                let n = c.u64()?;
                c.end()?;
                Inner::Pong(n)
            }
            kind::CLOSE => {
                let code = c.u16()?;
                c.end()?;
                Inner::Close(code)
            }
            kind::ERROR => {
                let (code, message) = decode_error_payload(&mut c)?;
                Inner::Error { code, message }
            }
            kind::FINISHED => {
                c.end()?;
                Inner::Finished
            }
            kind::KEY_UPDATE => Inner::KeyUpdate {
                ek: share(exact(&mut c, KEM_EK_LEN)?),
            },
            kind::KEY_REPLY => Inner::KeyReply {
                ct: share(exact(&mut c, KEM_CT_LEN)?),
            },
            kind::KEY_DONE => {
                c.end()?;
                Inner::KeyDone
            }
            kind::HELLO | kind::BUNDLE | kind::BUNDLE_REQUEST | kind::HANDSHAKE | kind::SEALED => {
                return Err(DecodeError::Unexpected(ty));
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(inner)
    }
}

/// The rest of the payload, which must be exactly `n` bytes.
fn exact<'a>(c: &mut Cursor<'a>, n: usize) -> Result<&'a [u8], DecodeError> {
    let b = c.bytes(n)?;
    c.end()?;
    Ok(b)
}

fn decode_auth(c: &mut Cursor<'_>, share: &impl Fn(&[u8]) -> Bytes) -> Result<Inner, DecodeError> {
    let flags = c.u8()?;
    if flags & !1 != 0 {
        return Err(DecodeError::Malformed("reserved AUTH flags set"));
    }
    let binding = if flags & 1 == 1 {
        Some(BindingParts {
            ml_dsa_public: share(c.bytes(ML_DSA_PUBLIC_KEY_LEN)?),
            ed25519_signature: share(c.bytes(64)?),
            ml_dsa_signature: share(c.bytes(ML_DSA_SIGNATURE_LEN)?),
        })
    } else {
        None
    };
    let signature = share(c.bytes(ML_DSA_SIGNATURE_LEN)?);
    c.end()?;
    Ok(Inner::Auth { binding, signature })
}

/// DATA, DATA_VIA with its client ids, or DATA_GROUP with its group tag (`ty` tells which).
fn decode_data(ty: u8, c: &mut Cursor<'_>) -> Result<Data, DecodeError> {
    let epoch = c.u64()?;
    let seq = c.u64()?;
    let msg_id = c.array()?;
    let sent_at_ms = c.u64()?;
    let mut via = Via::default();
    if ty == kind::DATA_VIA {
        let flags = c.u8()?;
        if flags == 0 || flags & !(via::FROM_CLIENT | via::TO_CLIENT) != 0 {
            return Err(DecodeError::Malformed("DATA_VIA flags"));
        }
        if flags & via::FROM_CLIENT != 0 {
            via.from_client = Some(ClientId(c.array()?));
        }
        if flags & via::TO_CLIENT != 0 {
            via.to_client = Some(ClientId(c.array()?));
        }
    }
    let group = match ty {
        kind::DATA_GROUP => {
            let tag = GroupTag {
                group: c.array()?,
                kind: c.u8()?,
                sender_seq: c.u64()?,
                head_seq: c.u64()?,
                head_digest: c.array()?,
            };
            if tag.kind == 0 || tag.kind > group_kind::MAX {
                return Err(DecodeError::Malformed("DATA_GROUP kind"));
            }
            Some(tag)
        }
        _ => None,
    };
    let body = c.rest();
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::MessageTooLarge(body.len()));
    }
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| DecodeError::Malformed("DATA body is not UTF-8"))?;
    Ok(Data {
        epoch,
        seq,
        msg_id,
        sent_at_ms,
        via,
        group,
        body,
    })
}

fn decode_file_meta(c: &mut Cursor<'_>) -> Result<FileMeta, DecodeError> {
    let transfer_id = c.array()?;
    let size = c.u64()?;
    let hash_alg = c.u8()?;
    let hash = c.array()?;
    let block_size = c.u32()?;
    let symbol_size = c.u16()?;
    let repair_per_mille = c.u16()?;
    let name = c.text(MAX_FILE_NAME)?;
    c.end()?;
    Ok(FileMeta {
        transfer_id,
        size,
        hash_alg,
        hash,
        block_size,
        symbol_size,
        repair_per_mille,
        name,
    })
}

fn decode_file_status(
    c: &mut Cursor<'_>,
    share: &impl Fn(&[u8]) -> Bytes,
) -> Result<FileStatus, DecodeError> {
    let transfer_id = c.array()?;
    let state = c.u8()?;
    let error = c.u16()?;
    let blocks = c.u32()?;
    let bitmap = c.rest();
    if bitmap.len() != usize::try_from(blocks.div_ceil(8)).unwrap_or(usize::MAX) {
        return Err(DecodeError::Malformed("FILE_STATUS bitmap length"));
    }
    Ok(FileStatus {
        transfer_id,
        state,
        error,
        blocks,
        bitmap: share(bitmap),
    })
}
