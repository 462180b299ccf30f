//! The wire format of `/commucat/data/1.0.0` (`protocols/data-v1.md` §1–§2): the outer frames, the
//! inner frames carried by SEALED, and a `tokio_util` decoder that checks a frame's length before it
//! allocates for it and tells "need more bytes" from "malformed". Below the node and the store: both
//! use its types ([`PROTOCOL`], [`ClientId`] and [`Via`], the ERROR frame of [`refuse`]).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use libp2p::StreamProtocol;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

/// The data protocol's stream protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/data/1.0.0");

/// Answers a stream we will not serve with ERROR `code` and closes it (at most 5 s).
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, code: ErrorCode) {
    let mut out = Vec::new();
    Frame::Error {
        code,
        message: "session limit reached; try later".into(),
    }
    .encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Largest value of a frame's length field (type + payload).
pub const MAX_FRAME_LEN: usize = 262_144;
/// Largest DATA body.
pub const MAX_MESSAGE_BYTES: usize = 65_536;
/// Largest ERROR message.
pub const MAX_ERROR_MESSAGE: usize = 256;
/// Largest FILE_META name.
pub const MAX_FILE_NAME: usize = 255;
/// Largest Noise message in a HANDSHAKE frame.
pub const MAX_NOISE_MESSAGE: usize = crate::crypto::handshake::MAX_NOISE_MESSAGE;
/// Protocol version carried by HELLO: the newest this code speaks (it also answers version 1).
pub const VERSION: u8 = 2;
/// The versions this code speaks, oldest first.
pub const VERSIONS: [u8; 2] = [1, 2];

/// HELLO flag bits (§2).
pub mod hello {
    /// The initiator does not hold the responder's bundle and asks for it.
    pub const NEED_BUNDLE: u8 = 1;
    /// Version 2: the initiator's own BUNDLE follows the HELLO.
    pub const BUNDLE_FOLLOWS: u8 = 2;
}

/// Frame type bytes.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const BUNDLE: u8 = 0x02;
    pub const HANDSHAKE: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const BUNDLE_REQUEST: u8 = 0x05;
    pub const SEALED: u8 = 0x10;
    pub const AUTH: u8 = 0x20;
    pub const DATA: u8 = 0x21;
    pub const ACK: u8 = 0x22;
    pub const FILE_META: u8 = 0x23;
    pub const FILE_CHUNK: u8 = 0x24;
    pub const FILE_STATUS: u8 = 0x25;
    pub const PRESENCE: u8 = 0x26;
    pub const PING: u8 = 0x27;
    pub const PONG: u8 = 0x28;
    pub const CLOSE: u8 = 0x29;
    pub const DATA_VIA: u8 = 0x2a;
    pub const RESYNC: u8 = 0x2b;
    pub const DATA_GROUP: u8 = 0x2c;
    pub const FINISHED: u8 = 0x2d;
    pub const KEY_UPDATE: u8 = 0x2e;
    pub const KEY_REPLY: u8 = 0x2f;
    pub const KEY_DONE: u8 = 0x30;
}

/// An ERROR code (§2). Unknown codes from peers are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const MALFORMED: Self = Self(1);
    pub const UNSUPPORTED_VERSION: Self = Self(2);
    pub const FRAME_TOO_LARGE: Self = Self(3);
    pub const UNKNOWN_FRAME_TYPE: Self = Self(4);
    pub const UNEXPECTED_FRAME: Self = Self(5);
    pub const HANDSHAKE_FAILED: Self = Self(6);
    pub const BAD_SIGNATURE: Self = Self(7);
    pub const BAD_KEM_CIPHERTEXT: Self = Self(8);
    pub const BAD_BUNDLE: Self = Self(9);
    pub const DECRYPT_FAILED: Self = Self(10);
    pub const REPLAY: Self = Self(11);
    pub const OUT_OF_ORDER: Self = Self(12);
    pub const MESSAGE_TOO_LARGE: Self = Self(13);
    pub const STALE_BUNDLE: Self = Self(14);
    pub const SEQUENCE_GAP: Self = Self(15);
    pub const FILE_REJECTED: Self = Self(16);
    pub const STORAGE: Self = Self(17);
    pub const LIMIT: Self = Self(18);
    pub const TIMEOUT: Self = Self(19);
    pub const INTERNAL: Self = Self(20);
    pub const HASH_MISMATCH: Self = Self(21);

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 22] = [
            "UNKNOWN",
            "MALFORMED",
            "UNSUPPORTED_VERSION",
            "FRAME_TOO_LARGE",
            "UNKNOWN_FRAME_TYPE",
            "UNEXPECTED_FRAME",
            "HANDSHAKE_FAILED",
            "BAD_SIGNATURE",
            "BAD_KEM_CIPHERTEXT",
            "BAD_BUNDLE",
            "DECRYPT_FAILED",
            "REPLAY",
            "OUT_OF_ORDER",
            "MESSAGE_TOO_LARGE",
            "STALE_BUNDLE",
            "SEQUENCE_GAP",
            "FILE_REJECTED",
            "STORAGE",
            "LIMIT",
            "TIMEOUT",
            "INTERNAL",
            "HASH_MISMATCH",
        ];
        NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Why bytes are not a frame. Each maps to the ERROR code the receiver answers with.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {0} exceeds {MAX_FRAME_LEN}")]
    TooLarge(u32),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type 0x{0:02x} is not valid here")]
    Unexpected(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("message body of {0} bytes exceeds {MAX_MESSAGE_BYTES}")]
    MessageTooLarge(usize),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// The ERROR code to answer with; `None` for I/O errors (nobody to answer).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            DecodeError::TooLarge(_) => ErrorCode::FRAME_TOO_LARGE,
            DecodeError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME_TYPE,
            DecodeError::Unexpected(_) => ErrorCode::UNEXPECTED_FRAME,
            DecodeError::Malformed(_) => ErrorCode::MALFORMED,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            DecodeError::MessageTooLarge(_) => ErrorCode::MESSAGE_TOO_LARGE,
            DecodeError::Io(_) => return None,
        })
    }
}

/// An outer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u8,
        need_bundle: bool,
        /// Version 2: the initiator's BUNDLE follows.
        bundle_follows: bool,
    },
    Bundle(Bytes),
    /// Version 2, responder to initiator: send your bundle (the one HELLO named is unknown here).
    BundleRequest,
    Handshake {
        step: u8,
        pattern: u8,
        bundle_id: Option<[u8; 16]>,
        noise: Bytes,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Still encrypted: `length` and `counter` are what the AEAD authenticates with `body`.
    Sealed {
        length: u32,
        counter: u64,
        body: BytesMut,
    },
}

/// Bounds-checked reading of a payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("payload too short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes"))
        }
    }
    fn text(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::Malformed("text too long"));
        }
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }
}

fn put_text(out: &mut Vec<u8>, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(u16::try_from(end).expect("max ≤ u16"));
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn decode_error_payload(c: &mut Cursor<'_>) -> Result<(ErrorCode, String), DecodeError> {
    let code = ErrorCode(c.u16()?);
    let message = c.text(MAX_ERROR_MESSAGE)?;
    c.end()?;
    Ok((code, message))
}

/// HELLO: `version flags`; which flags are defined depends on the version.
fn decode_hello(c: &mut Cursor<'_>) -> Result<Frame, DecodeError> {
    let version = c.u8()?;
    let flags = c.u8()?;
    c.end()?;
    let allowed = match version {
        1 => hello::NEED_BUNDLE,
        2 => hello::NEED_BUNDLE | hello::BUNDLE_FOLLOWS,
        other => return Err(DecodeError::UnsupportedVersion(other)),
    };
    if flags & !allowed != 0 {
        return Err(DecodeError::Malformed("reserved HELLO flags set"));
    }
    Ok(Frame::Hello {
        version,
        need_bundle: flags & hello::NEED_BUNDLE != 0,
        bundle_follows: flags & hello::BUNDLE_FOLLOWS != 0,
    })
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32(0); // length, patched below
        match self {
            Frame::Hello {
                version,
                need_bundle,
                bundle_follows,
            } => {
                out.push(kind::HELLO);
                out.push(*version);
                out.push(
                    (u8::from(*need_bundle) * hello::NEED_BUNDLE)
                        | (u8::from(*bundle_follows) * hello::BUNDLE_FOLLOWS),
                );
            }
            Frame::Bundle(b) => {
                out.push(kind::BUNDLE);
                out.extend_from_slice(b);
            }
            Frame::BundleRequest => out.push(kind::BUNDLE_REQUEST),
            Frame::Handshake {
                step,
                pattern,
                bundle_id,
                noise,
            } => {
                out.push(kind::HANDSHAKE);
                out.push(*step);
                out.push(*pattern);
                if let Some(id) = bundle_id {
                    out.extend_from_slice(id);
                }
                out.extend_from_slice(noise);
            }
            Frame::Error { code, message } => {
                out.push(kind::ERROR);
                out.put_u16(code.0);
                put_text(out, message, MAX_ERROR_MESSAGE);
            }
            Frame::Sealed { counter, body, .. } => {
                out.push(kind::SEALED);
                out.put_u64(*counter);
                out.extend_from_slice(body);
            }
        }
        let length = u32::try_from(out.len() - start - 4).expect("frames are bounded");
        out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// Parses one whole frame (`bytes` = type ‖ payload, without the length field).
    fn parse(length: u32, mut bytes: BytesMut) -> Result<Frame, DecodeError> {
        let ty = bytes[0];
        bytes.advance(1);
        let mut c = Cursor(&bytes);
        let frame = match ty {
            kind::HELLO => decode_hello(&mut c)?,
            kind::BUNDLE => Frame::Bundle(bytes.freeze()),
            kind::BUNDLE_REQUEST => {
                c.end()?;
                Frame::BundleRequest
            }
            kind::HANDSHAKE => {
                let step = c.u8()?;
                let pattern = c.u8()?;
                if !(1..=3).contains(&step) || !(1..=3).contains(&pattern) {
                    return Err(DecodeError::Malformed("HANDSHAKE step or pattern"));
                }
                let bundle_id = if step == 1 {
                    Some(c.array::<16>()?)
                } else {
                    None
                };
                let noise = c.rest();
                if noise.len() > MAX_NOISE_MESSAGE {
                    return Err(DecodeError::Malformed("Noise message too long"));
                }
                Frame::Handshake {
                    step,
                    pattern,
                    bundle_id,
                    noise: Bytes::copy_from_slice(noise),
                }
            }
            kind::ERROR => {
                let (code, message) = decode_error_payload(&mut c)?;
                Frame::Error { code, message }
            }
            kind::SEALED => {
                let counter = c.u64()?;
                if c.0.len() < crate::crypto::aead::TAG_LEN {
                    return Err(DecodeError::Malformed("SEALED frame shorter than its tag"));
                }
                bytes.advance(8);
                Frame::Sealed {
                    length,
                    counter,
                    body: bytes,
                }
            }
            kind::AUTH..=kind::RESYNC => return Err(DecodeError::Unexpected(ty)),
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(frame)
    }
}

/// Decodes outer frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(src[..4].try_into().expect("4 bytes"));
        if length == 0 {
            return Err(DecodeError::Malformed("zero frame length"));
        }
        let len = usize::try_from(length).unwrap_or(usize::MAX);
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLarge(length));
        }
        if src.len() < 4 + len {
            // The length is within bounds: now it is safe to make room for the rest.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let bytes = src.split_to(len);
        Frame::parse(length, bytes).map(Some)
    }
}

mod client;
mod inner;
#[cfg(test)]
mod tests;

pub use client::{BadClientId, ClientId, Via};
pub use inner::{
    BindingParts, Data, FileChunk, FileMeta, FileStatus, GroupTag, Inner, file_state, group_kind,
    via,
};
