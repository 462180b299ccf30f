//! One end-to-end session over one stream (`protocols/data-v1.md` §3): HELLO / BUNDLE / HANDSHAKE /
//! AUTH around [`crate::crypto::handshake`], then sealed inner frames both ways. Generic over any
//! tokio byte stream, so the same code runs on libp2p streams and in-memory pipes in tests.

use std::time::Duration;

use prometheus_client::{metrics::counter::Counter, registry::Registry};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

use crate::wire::{BindingParts, DecodeError, ErrorCode, Frame, FrameCodec, Inner, VERSION};
use crate::{
    crypto::{
        self, Bundle, LocalKeys, Pattern, Role,
        aead::{OpenError, Opener, Sealer},
        handshake::{self, Initiator, Responder},
    },
    identity::Binding,
};

mod setup;

pub use setup::{initiate, respond};

/// The whole handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to deliver a cleartext ERROR before giving up on the stream.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Completed handshakes, for `/api/server-info` and the metrics: Noise handshakes that finished,
/// and post-quantum ones (ML-KEM confirmed and both ML-DSA transcript signatures verified).
#[derive(Debug, Default, Clone)]
pub struct HandshakeCounters {
    noise: Counter,
    post_quantum: Counter,
}

impl HandshakeCounters {
    pub fn noise(&self) -> u64 {
        self.noise.get()
    }

    pub fn post_quantum(&self) -> u64 {
        self.post_quantum.get()
    }

    /// Exports both: `commucat_data_handshakes_noise_total`,
    /// `commucat_data_handshakes_post_quantum_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "data_handshakes_noise",
            "Completed Noise handshakes of /commucat/data sessions",
            self.noise.clone(),
        );
        registry.register(
            "data_handshakes_post_quantum",
            "Completed hybrid post-quantum handshakes (ML-KEM confirmed, ML-DSA transcripts verified)",
            self.post_quantum.clone(),
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the stream")]
    Closed,
    /// We rejected what the peer sent (and told it with an ERROR frame).
    #[error("{code}: {detail}")]
    Protocol { code: ErrorCode, detail: String },
    /// The peer rejected what we sent.
    #[error("peer reported {code}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("handshake timed out")]
    Timeout,
    /// We asked the peer to send messages again (RESYNC) and end the session.
    #[error("asked the peer to send again what this store lost")]
    Resynced,
}

impl Error {
    fn protocol(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error::Protocol {
            code,
            detail: detail.into(),
        }
    }

    /// The ERROR we send for a failure that is ours to report: a protocol violation by the peer,
    /// or a handshake that ran out of time (`TIMEOUT`). I/O errors and the peer's own ERROR are
    /// not reported back.
    fn to_report(&self) -> Option<(ErrorCode, String)> {
        match self {
            Error::Protocol { code, detail } => Some((*code, detail.clone())),
            Error::Timeout => Some((
                ErrorCode::TIMEOUT,
                format!(
                    "the handshake did not finish within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            )),
            _ => None,
        }
    }

    /// The ERROR code of a protocol failure on either side.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Protocol { code, .. } | Error::Remote { code, .. } => Some(*code),
            Error::Timeout => Some(ErrorCode::TIMEOUT),
            _ => None,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Io(io) => Error::Io(io),
            other => Error::Protocol {
                code: other.code().unwrap_or(ErrorCode::INTERNAL),
                detail: other.to_string(),
            },
        }
    }
}

impl From<crypto::Error> for Error {
    fn from(e: crypto::Error) -> Self {
        let code = match &e {
            crypto::Error::BadKemCiphertext => ErrorCode::BAD_KEM_CIPHERTEXT,
            crypto::Error::BadBundle(_) => ErrorCode::BAD_BUNDLE,
            crypto::Error::BadSignature(_) => ErrorCode::BAD_SIGNATURE,
            crypto::Error::HandshakeFailed(_) => ErrorCode::HANDSHAKE_FAILED,
            _ => ErrorCode::INTERNAL,
        };
        Error::protocol(code, e.to_string())
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        let code = match e {
            OpenError::Replay { .. } => ErrorCode::REPLAY,
            OpenError::OutOfOrder { .. } => ErrorCode::OUT_OF_ORDER,
            OpenError::DecryptFailed => ErrorCode::DECRYPT_FAILED,
            OpenError::Exhausted => ErrorCode::LIMIT,
        };
        Error::protocol(code, e.to_string())
    }
}

/// The receiving half of an established session.
pub struct Reader<S> {
    frames: FramedRead<ReadHalf<S>, FrameCodec>,
    opener: Opener,
}

/// The sending half of an established session.
pub struct Writer<S> {
    io: WriteHalf<S>,
    sealer: Sealer,
    buf: Vec<u8>,
}

/// A session after a successful handshake.
pub struct Session<S> {
    pub reader: Reader<S>,
    pub writer: Writer<S>,
    pub remote: PeerId,
    pub pattern: Pattern,
    /// The responder's verified bundle (initiator side), for caching.
    pub remote_bundle: Option<Bundle>,
}

impl<S: AsyncRead> Reader<S> {
    /// The next inner frame; `Ok(None)` when the peer closed the stream between frames. An ERROR
    /// from the peer is returned as `Err(Remote)`.
    pub async fn recv(&mut self) -> Result<Option<Inner>, Error> {
        let Some(frame) = self.frames.next().await else {
            return Ok(None);
        };
        match frame? {
            Frame::Sealed {
                length,
                counter,
                mut body,
            } => {
                let n = self.opener.open(length, counter, &mut body)?.len();
                // The plaintext stays where it was decrypted: payloads are slices of it.
                let plain = body.freeze().slice(..n);
                match Inner::decode_shared(&plain)? {
                    Inner::Error { code, message } => Err(Error::Remote { code, message }),
                    inner => Ok(Some(inner)),
                }
            }
            Frame::Error { code, message } => Err(Error::Remote { code, message }),
            other => Err(Error::protocol(
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} frame after the handshake", frame_name(&other)),
            )),
        }
    }
}

impl<S: AsyncWrite> Writer<S> {
    /// Seals and queues `inner` without writing it yet (see [`Writer::flush`]).
    pub fn queue(&mut self, inner: &Inner) -> Result<(), Error> {
        self.sealer
            .seal_with(&mut self.buf, |out| inner.encode(out))?;
        Ok(())
    }

    /// Writes everything queued to the stream, without flushing the stream itself.
    pub async fn write_queued(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, inner: &Inner) -> Result<(), Error> {
        self.queue(inner)?;
        self.flush().await
    }

    /// Seals `inner` and returns the frame's bytes without sending them (for tools and tests that
    /// replay or tamper with frames).
    #[doc(hidden)]
    pub fn seal_detached(&mut self, inner: &Inner) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.sealer.seal_with(&mut out, |o| inner.encode(o))?;
        Ok(out)
    }

    /// Writes raw bytes to the stream (for tools and tests).
    #[doc(hidden)]
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Sends a sealed ERROR (best effort) and shuts the stream down.
    pub async fn fail(&mut self, code: ErrorCode, message: &str) {
        let _ = tokio::time::timeout(REPORT_TIMEOUT, async {
            let _ = self
                .send(&Inner::Error {
                    code,
                    message: message.to_owned(),
                })
                .await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Tells the peer why the session ends ([`Self::fail`]) when the failure is ours to report:
    /// a protocol error or a handshake timeout. Other errors (I/O, the peer's own ERROR) end the
    /// stream silently.
    pub async fn report(&mut self, e: &Error) {
        if let Some((code, detail)) = e.to_report() {
            self.fail(code, &detail).await;
        }
    }

    /// Sends CLOSE and shuts the stream down.
    pub async fn close(&mut self) {
        let _ = self.send(&Inner::Close(0)).await;
        let _ = self.io.shutdown().await;
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "HELLO",
        Frame::Bundle(_) => "BUNDLE",
        Frame::Handshake { .. } => "HANDSHAKE",
        Frame::Error { .. } => "ERROR",
        Frame::Sealed { .. } => "SEALED",
    }
}

#[cfg(test)]
mod tests;
