//! One end-to-end session over one stream (`protocols/data-v1.md` §3, `protocols/data-v2.md` §3):
//! HELLO / BUNDLE / HANDSHAKE and AUTH (version 1) or FINISHED (version 2) around
//! [`crate::crypto::handshake`], then sealed inner frames both ways, with key updates in version 2.
//! Generic over any tokio byte stream, so the same code runs on libp2p streams and in-memory pipes
//! in tests.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    time::Instant,
};
use tokio_util::codec::FramedRead;

use crate::wire::{BindingParts, DecodeError, ErrorCode, Frame, FrameCodec, Inner};
use crate::{
    crypto::{
        self, Bundle, BundleId, LocalKeys, Pattern, Role,
        aead::{OpenError, Opener, Sealer},
        bundle,
        handshake::{self, Initiator, Responder},
    },
    identity::Binding,
};

mod rekey;
mod setup;
mod v2;

pub use rekey::Policy as RekeyPolicy;
pub use setup::{initiate, respond};

/// Peers remembered per [`Context`] (which speak only version 1, which hold our bundle); past it
/// the memory starts over.
pub const MAX_REMEMBERED_PEERS: usize = 4096;
/// A peer that answered version 2 with `UNSUPPORTED_VERSION` is spoken to in version 1 this long,
/// then asked again (it may have been upgraded).
pub const OLD_VERSION_MEMORY: Duration = Duration::from_secs(3600);

/// What every session of a node starts from: its keys, the peers' bundles it verified, what it
/// learnt about peers, its counters and settings.
pub struct Context {
    pub keys: Arc<LocalKeys>,
    pub counters: HandshakeCounters,
    /// Peers' bundles, verified once.
    pub bundles: bundle::Cache,
    /// The newest protocol version this node speaks (`data.protocol_version`: 1 or 2).
    pub version: u8,
    pub rekey: RekeyPolicy,
    peers: Mutex<PeerMemory>,
}

#[derive(Default)]
struct PeerMemory {
    /// Peers that speak only version 1, and since when we know it.
    version_1: HashMap<libp2p::PeerId, Instant>,
    /// The id of our bundle each peer proved to hold (it answered a version 2 handshake with it).
    holds: HashMap<libp2p::PeerId, crypto::BundleId>,
}

impl Context {
    pub fn new(keys: Arc<LocalKeys>) -> Self {
        Self {
            keys,
            counters: HandshakeCounters::default(),
            bundles: bundle::Cache::default(),
            version: crate::wire::VERSION,
            rekey: RekeyPolicy::default(),
            peers: Mutex::default(),
        }
    }

    /// Speaks at most `version` (1 or 2).
    pub fn with_version(self, version: u8) -> Self {
        Self { version, ..self }
    }

    pub fn with_rekey(self, rekey: RekeyPolicy) -> Self {
        Self { rekey, ..self }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, PeerMemory> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version to open a session to `peer` with.
    pub fn version_for(&self, peer: &libp2p::PeerId) -> u8 {
        let mut m = self.memory();
        match m.version_1.get(peer) {
            Some(since) if since.elapsed() < OLD_VERSION_MEMORY => 1,
            Some(_) => {
                m.version_1.remove(peer);
                self.version
            }
            None => self.version,
        }
    }

    fn remember_version_1(&self, peer: libp2p::PeerId) {
        let mut m = self.memory();
        if m.version_1.len() >= MAX_REMEMBERED_PEERS {
            m.version_1.clear();
        }
        m.version_1.insert(peer, Instant::now());
    }

    fn holds_our_bundle(&self, peer: &libp2p::PeerId, id: &crypto::BundleId) -> bool {
        self.memory().holds.get(peer) == Some(id)
    }

    fn remember_holds(&self, peer: libp2p::PeerId, id: crypto::BundleId) {
        let mut m = self.memory();
        if m.holds.len() >= MAX_REMEMBERED_PEERS {
            m.holds.clear();
        }
        m.holds.insert(peer, id);
    }
}

/// The whole handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to deliver a cleartext ERROR before giving up on the stream.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Completed handshakes, for `/api/server-info` and the metrics: Noise handshakes that finished,
/// and post-quantum ones (version 1: ML-KEM confirmed and both ML-DSA transcript signatures
/// verified; version 2: the peer's FINISHED opened under keys from all three ML-KEM secrets).
#[derive(Debug, Default, Clone)]
pub struct HandshakeCounters {
    noise: Counter,
    post_quantum: Counter,
    key_updates: Counter,
    by_version: Family<VersionLabels, Counter>,
}

/// The protocol version of a session, as a metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: u8,
}

impl HandshakeCounters {
    pub fn noise(&self) -> u64 {
        self.noise.get()
    }

    pub fn post_quantum(&self) -> u64 {
        self.post_quantum.get()
    }

    /// Key updates finished in version 2 sessions, either side.
    pub fn key_updates(&self) -> u64 {
        self.key_updates.get()
    }

    /// Sessions of protocol `version` whose Noise handshake finished.
    pub fn sessions(&self, version: u8) -> u64 {
        self.by_version
            .get_or_create(&VersionLabels { version })
            .get()
    }

    /// A Noise handshake of a `version` session finished.
    fn noise_done(&self, version: u8) {
        self.noise.inc();
        self.by_version
            .get_or_create(&VersionLabels { version })
            .inc();
    }

    /// Exports them: `commucat_data_handshakes_noise_total`,
    /// `commucat_data_handshakes_post_quantum_total`, `commucat_data_key_updates_total` and
    /// `commucat_data_sessions_total{version}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "data_handshakes_noise",
            "Completed Noise handshakes of /commucat/data sessions",
            self.noise.clone(),
        );
        registry.register(
            "data_handshakes_post_quantum",
            "Completed hybrid post-quantum handshakes (keys confirmed, peers authenticated)",
            self.post_quantum.clone(),
        );
        registry.register(
            "data_key_updates",
            "Key updates finished in version 2 /commucat/data sessions",
            self.key_updates.clone(),
        );
        registry.register(
            "data_sessions",
            "/commucat/data sessions whose handshake finished, by protocol version",
            self.by_version.clone(),
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
    /// Version 2: the key state shared with the writer.
    keys: Option<rekey::Shared>,
    /// Version 2: the peer's FINISHED has not arrived yet; counted here when it does.
    awaiting_finished: Option<Counter>,
}

/// The sending half of an established session.
pub struct Writer<S> {
    io: WriteHalf<S>,
    sealer: Sealer,
    buf: Vec<u8>,
    keys: Option<rekey::Shared>,
    /// Version 2: plaintext bytes sealed since the key state last counted them.
    unsettled: usize,
}

/// A session after a successful handshake.
pub struct Session<S> {
    pub reader: Reader<S>,
    pub writer: Writer<S>,
    pub remote: PeerId,
    pub pattern: Pattern,
    /// The protocol version spoken (1 or 2).
    pub version: u8,
    /// The responder's verified bundle (initiator side), for caching.
    pub remote_bundle: Option<Bundle>,
}

impl<S> Session<S> {
    /// Key updates finished in this session so far (version 2).
    pub fn key_updates(&self) -> u64 {
        self.reader.keys.as_ref().map_or(0, |k| {
            k.lock().unwrap_or_else(PoisonError::into_inner).updates()
        })
    }
}

impl<S: AsyncRead> Reader<S> {
    /// The next inner frame; `Ok(None)` when the peer closed the stream between frames. An ERROR
    /// from the peer is returned as `Err(Remote)`. FINISHED and KEY_DONE are taken here; KEY_UPDATE
    /// and KEY_REPLY are taken here and then returned: the caller flushes its writer, which sends
    /// the answer.
    pub async fn recv(&mut self) -> Result<Option<Inner>, Error> {
        loop {
            let Some(frame) = self.frames.next().await else {
                return Ok(None);
            };
            let inner = self.open(frame?)?;
            if let Some(inner) = self.control(inner)? {
                return Ok(Some(inner));
            }
        }
    }

    /// Version 2, responder: the peer's FINISHED, which must come first.
    async fn expect_finished(&mut self) -> Result<(), Error> {
        let Some(frame) = self.frames.next().await else {
            return Err(Error::Closed);
        };
        let inner = self.open(frame?)?;
        self.control(inner).and_then(|rest| match rest {
            None if self.awaiting_finished.is_none() => Ok(()),
            _ => Err(Error::protocol(
                ErrorCode::UNEXPECTED_FRAME,
                "expected FINISHED",
            )),
        })
    }

    /// Decrypts and decodes a SEALED frame; the peer's ERROR (outer or inner) is `Err(Remote)`.
    fn open(&mut self, frame: Frame) -> Result<Inner, Error> {
        match frame {
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
                    inner => Ok(inner),
                }
            }
            Frame::Error { code, message } => Err(Error::Remote { code, message }),
            other => Err(Error::protocol(
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} frame after the handshake", frame_name(&other)),
            )),
        }
    }

    /// The session's own frames (FINISHED, key updates): `None` when taken here.
    fn control(&mut self, inner: Inner) -> Result<Option<Inner>, Error> {
        let unexpected = |d: &str| Error::protocol(ErrorCode::UNEXPECTED_FRAME, d);
        if let Some(counter) = &self.awaiting_finished {
            if inner != Inner::Finished {
                return Err(unexpected("expected FINISHED"));
            }
            counter.inc();
            self.awaiting_finished = None;
            return Ok(None);
        }
        let own = matches!(
            inner,
            Inner::Finished | Inner::KeyUpdate { .. } | Inner::KeyReply { .. } | Inner::KeyDone
        );
        let Some(keys) = self.keys.as_ref().filter(|_| own) else {
            return if own {
                Err(unexpected("a version 2 frame in a version 1 session"))
            } else {
                Ok(Some(inner))
            };
        };
        let mut k = keys.lock().unwrap_or_else(PoisonError::into_inner);
        match &inner {
            Inner::KeyUpdate { ek } => k.on_update(ek)?,
            Inner::KeyReply { ct } => self.opener = Opener::new(&k.on_reply(ct)?),
            Inner::KeyDone => {
                self.opener = Opener::new(&k.on_done()?);
                return Ok(None);
            }
            _ => return Err(unexpected("a second FINISHED")),
        }
        Ok(Some(inner))
    }
}

impl<S: AsyncWrite> Writer<S> {
    /// Seals and queues `inner` without writing it yet (see [`Writer::flush`]).
    pub fn queue(&mut self, inner: &Inner) -> Result<(), Error> {
        self.settle_keys()?;
        let before = self.buf.len();
        self.sealer
            .seal_with(&mut self.buf, |out| inner.encode(out))?;
        self.unsettled += self.buf.len() - before;
        Ok(())
    }

    /// Version 2, before a frame or a flush: seals a pending KEY_REPLY / KEY_DONE under the
    /// current key and switches to the next; as initiator, counts the bytes sealed since the last
    /// call and queues a KEY_UPDATE when one is due. One lock per frame.
    fn settle_keys(&mut self) -> Result<(), Error> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let sealed = std::mem::take(&mut self.unsettled);
        let mut k = keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((marker, next)) = k.take_marker() {
            self.sealer
                .seal_with(&mut self.buf, |out| marker.encode(out))?;
            self.sealer = Sealer::new(&next);
        }
        if let Some(update) = k.update_due(sealed) {
            self.sealer
                .seal_with(&mut self.buf, |out| update.encode(out))?;
        }
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

    /// Writes everything queued (with the answer to a key update, if one is due).
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.settle_keys()?;
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
        Frame::BundleRequest => "BUNDLE_REQUEST",
        Frame::Handshake { .. } => "HANDSHAKE",
        Frame::Error { .. } => "ERROR",
        Frame::Sealed { .. } => "SEALED",
    }
}

#[cfg(test)]
mod tests;
