//! The initiator's side: one worker per peer with something to send. It opens a session (finding the
//! peer through the DHT when the swarm cannot reach it), sends the outbox in order with at most
//! `SEND_WINDOW` unacknowledged messages, then pending files block by block, resuming from the
//! receiver's FILE_STATUS. Failed attempts back off from 1 s to `data.max_retry_secs`.

use std::{sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Notify, mpsc},
};
use tokio_util::{compat::FuturesAsyncReadCompatExt, task::AbortOnDropHandle};

use super::{
    session::{self, Writer},
    shared::{Event, Shared, Wake},
    transfer,
};
use crate::{
    crypto::Bundle,
    fec,
    store::{
        self,
        transfers::{Outgoing, State},
    },
    wire::{Data, ErrorCode, FileMeta, FileStatus, Inner, file_state},
};

/// Unacknowledged DATA frames at most.
pub const SEND_WINDOW: usize = 256;
/// Without an ACK or FILE_STATUS for this long, the session is given up.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the receiver's hash check of a whole file.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(600);
/// An idle session is kept this long for new messages, then closed.
pub const LINGER: Duration = Duration::from_secs(20);
/// Frames from the reader task buffered.
const READ_BUFFER: usize = 64;
/// FILE_CHUNK payload per frame: below `MAX_FRAME_LEN` with room for the headers and tag.
const CHUNK_PAYLOAD: usize = crate::wire::MAX_FRAME_LEN - 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Attempt {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Session(#[from] session::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("cannot read the file to send: {0}")]
    File(#[from] std::io::Error),
    #[error("the peer holds a newer key bundle; fetching it")]
    StaleBundle,
    #[error("the peer speaks only version 1 of /commucat/data; again in version 1")]
    OlderVersion,
    #[error("{0}")]
    KeyChanged(String),
    #[error("no progress for {0:?}")]
    Stalled(Duration),
    #[error("the peer lost messages it had acknowledged; sending {0} of them again")]
    Resync(usize),
}

pub(super) fn has_pending(shared: &Shared, peer: &PeerId) -> bool {
    shared
        .outbox
        .pending(peer, 0, 1)
        .is_ok_and(|v| !v.is_empty())
        || shared
            .transfers
            .pending_to(peer)
            .is_ok_and(|v| !v.is_empty())
}

/// Delivers to `peer` until nothing is pending (or the service stops).
pub(super) async fn run_worker(shared: &Arc<Shared>, peer: PeerId, wake: &Wake) {
    let mut backoff = Duration::from_secs(1);
    let max = Duration::from_secs(shared.cfg.max_retry_secs);
    while !shared.shutdown.is_cancelled() && has_pending(shared, &peer) {
        let outcome = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = attempt(shared, peer, &wake.work) => r,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "delivery attempt failed");
                shared.emit(Event::DeliveryFailed {
                    to: peer,
                    error: e.to_string(),
                });
                let wait = if matches!(
                    e,
                    Attempt::StaleBundle | Attempt::OlderVersion | Attempt::Resync(_)
                ) {
                    Duration::ZERO
                } else {
                    // ±25 % jitter so that many senders do not retry in step.
                    backoff.mul_f64(0.75 + rand::random::<f64>() / 2.0)
                };
                // New messages do not cut the backoff short (they would each cost a DHT lookup
                // while the peer is away); the peer connecting does.
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    () = wake.seen.notified() => {}
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

async fn open(shared: &Shared, peer: PeerId) -> Result<crate::node::streams::DataStream, Attempt> {
    let control = &shared.control;
    match control.open_stream(peer).await {
        Ok(s) => Ok(s),
        Err(first) => {
            // The swarm could not reach it with what it knows: look it up (DHT, presence record).
            tracing::debug!(%peer, error = %first, "no stream yet; looking the peer up");
            shared
                .node
                .connect(peer, Vec::new())
                .await
                .map_err(|e| Attempt::Unreachable(e.to_string()))?;
            control
                .open_stream(peer)
                .await
                .map_err(|e| Attempt::Unreachable(e.to_string()))
        }
    }
}

/// The peer's bundle as the store last kept it, verified (once: then from the session cache).
pub(super) fn cached_bundle(shared: &Shared, peer: &PeerId) -> Option<Bundle> {
    // A bundle the store cannot give back is fetched again.
    let bytes = shared.bundles.get(peer).ok()??;
    shared.session.bundles.verify(&bytes, peer).ok()
}

async fn attempt(shared: &Arc<Shared>, peer: PeerId, notify: &Notify) -> Result<(), Attempt> {
    let stream = open(shared, peer).await?.compat();
    let known = cached_bundle(shared, &peer);
    let had_bundle = known.is_some();
    let known_keys = known.as_ref().map(|b| b.binding().clone());
    let session = match session::initiate(stream, &shared.session, peer, known).await {
        Ok(s) => s,
        Err(e) if had_bundle && e.code() == Some(ErrorCode::STALE_BUNDLE) => {
            shared.session.bundles.remove(&peer);
            if let Err(e) = shared.bundles.remove(&peer) {
                tracing::warn!(%peer, error = %e, "cannot drop a stale bundle");
            }
            return Err(Attempt::StaleBundle);
        }
        // A version 1 node: `initiate` remembered it, and the next attempt speaks version 1.
        Err(session::Error::Remote { code, .. }) if code == ErrorCode::UNSUPPORTED_VERSION => {
            return Err(Attempt::OlderVersion);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(b) = &session.remote_bundle
        && let Err(e) = shared.bundles.put(&peer, b.as_bytes())
    {
        tracing::warn!(%peer, error = %e, "cannot keep the peer's bundle for the next session");
    }
    // The keys this session runs under, against the ones pinned for the peer's contacts.
    let keys = session
        .remote_bundle
        .as_ref()
        .map(|b| b.binding())
        .or(known_keys.as_ref());
    if let Some(k) = keys
        && let Some(c) = shared
            .contacts
            .observe_peer(&peer, k, crate::store::contacts::Seen::Session)?
            .first()
    {
        return Err(Attempt::KeyChanged(format!(
            "contact {} shows another key; waiting for the person to confirm it",
            c.label
        )));
    }
    let mut reader = session.reader;
    let (tx, rx) = mpsc::channel(READ_BUFFER);
    // Aborted however this attempt ends, cancelled included.
    let reader_task = AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let next = reader.recv().await;
            let end = !matches!(next, Ok(Some(_)));
            if tx.send(next).await.is_err() || end {
                break;
            }
        }
    }));
    let mut out = Sender {
        shared,
        peer,
        writer: session.writer,
        rx,
        in_flight: 0,
        sent_up_to: 0,
    };
    let result = out.run(notify).await;
    drop(reader_task);
    if let Err(Attempt::Session(e)) = &result {
        out.writer.report(e).await;
    }
    result
}

/// Keeps file data at most at `data.max_send_rate_kib`.
struct Pace {
    rate: u64,
    start: tokio::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new(kib_per_sec: u64) -> Self {
        Self {
            rate: kib_per_sec.saturating_mul(1024),
            start: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Records `n` bytes sent and sleeps until the average rate is back at the limit.
    async fn sent(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        tokio::time::sleep_until(self.start + due).await;
    }
}

struct Sender<'a, S> {
    shared: &'a Arc<Shared>,
    peer: PeerId,
    writer: Writer<S>,
    rx: mpsc::Receiver<Result<Option<Inner>, session::Error>>,
    in_flight: usize,
    sent_up_to: u64,
}

impl<S: AsyncRead + AsyncWrite> Sender<'_, S> {
    async fn run(&mut self, notify: &Notify) -> Result<(), Attempt> {
        loop {
            self.send_messages(notify).await?;
            let next_file = self
                .shared
                .transfers
                .pending_to(&self.peer)?
                .into_iter()
                .next();
            if let Some(t) = next_file {
                self.send_file(t).await?;
                continue;
            }
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(LINGER) => {
                    self.writer.close().await;
                    return Ok(());
                }
                next = self.rx.recv() => drop(self.on_frame(next)?),
            }
        }
    }

    /// The next frame from the peer, or why the session ended.
    fn on_frame(
        &mut self,
        next: Option<Result<Option<Inner>, session::Error>>,
    ) -> Result<Option<Inner>, Attempt> {
        match next {
            None | Some(Ok(None)) => Err(session::Error::Closed.into()),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Some(Inner::Ack { epoch, seq }))) => {
                if epoch == self.shared.outbox.epoch() {
                    let n = self.shared.outbox.acknowledge(&self.peer, seq)?;
                    self.in_flight = self.in_flight.saturating_sub(n);
                    if n > 0 {
                        self.shared.emit(Event::MessagesDelivered {
                            to: self.peer,
                            count: n,
                            up_to_seq: seq,
                        });
                    }
                }
                Ok(None)
            }
            Some(Ok(Some(Inner::Resync { epoch, next_seq }))) => {
                if epoch != self.shared.outbox.epoch() {
                    return Ok(None);
                }
                // The receiver lost its store and asks for what it had acknowledged; it closes
                // this session, and the next one sends from what is queued again.
                let n = self.shared.outbox.rewind(&self.peer, next_seq)?;
                tracing::warn!(peer = %self.peer, next_seq, requeued = n, "peer lost acknowledged messages; sending them again");
                Err(Attempt::Resync(n))
            }
            // A key update answered: the reader took the new key, and KEY_DONE goes out with
            // the next write.
            Some(Ok(Some(Inner::Pong(_) | Inner::Presence { .. } | Inner::KeyReply { .. }))) => {
                Ok(None)
            }
            Some(Ok(Some(Inner::Ping(n)))) => {
                // Answered on the next write.
                self.writer.queue(&Inner::Pong(n))?;
                Ok(None)
            }
            Some(Ok(Some(f @ Inner::FileStatus(_)))) => Ok(Some(f)),
            Some(Ok(Some(_))) => Err(session::Error::Protocol {
                code: ErrorCode::UNEXPECTED_FRAME,
                detail: "frame not valid from the responder".into(),
            }
            .into()),
        }
    }

    async fn send_messages(&mut self, notify: &Notify) -> Result<(), Attempt> {
        let epoch = self.shared.outbox.epoch();
        loop {
            if self.in_flight < SEND_WINDOW {
                // Durable before it leaves: the sender may have woken us before its commit.
                let batch = self
                    .shared
                    .outbox
                    .pending_durable(&self.peer, self.sent_up_to, SEND_WINDOW - self.in_flight)
                    .await?;
                for m in &batch {
                    let mut msg_id = [0u8; 16];
                    hex::decode_to_slice(&m.id, &mut msg_id)
                        .map_err(|_| store::Error::Corrupt("message id"))?;
                    self.writer.queue(&Inner::Data(Data {
                        epoch,
                        seq: m.seq,
                        msg_id,
                        sent_at_ms: m.created_at_ms,
                        via: m.via,
                        group: m.group,
                        body: m.body.clone(),
                    }))?;
                    self.sent_up_to = m.seq;
                    self.in_flight += 1;
                }
                self.writer.flush().await?;
            }
            if self.in_flight == 0 {
                return Ok(());
            }
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(PROGRESS_TIMEOUT) => return Err(Attempt::Stalled(PROGRESS_TIMEOUT)),
                // A late FILE_STATUS of an earlier transfer needs nothing more.
                next = self.rx.recv() => drop(self.on_frame(next)?),
            }
        }
    }

    /// The next FILE_STATUS of transfer `id`, handling ACKs and pings meanwhile.
    async fn status(&mut self, id: &[u8; 16], within: Duration) -> Result<FileStatus, Attempt> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Err(Attempt::Stalled(within)),
                next = self.rx.recv() => next,
            };
            if let Some(Inner::FileStatus(s)) = self.on_frame(next)?
                && &s.transfer_id == id
            {
                return Ok(s);
            }
            self.writer.flush().await?;
        }
    }

    fn record(&self, t: &Outgoing) -> Result<(), Attempt> {
        self.shared.transfers.outgoing().put(t)?;
        Ok(())
    }

    /// Applies a FILE_STATUS; returns whether the transfer is over.
    fn apply(&self, t: &mut Outgoing, s: &FileStatus) -> Result<bool, Attempt> {
        match s.state {
            file_state::COMPLETE => {
                t.file.state = State::Complete;
                t.file.blocks_done = t.file.blocks_total;
            }
            file_state::FAILED => {
                t.file.state = State::Failed;
                t.file.error = Some(format!("receiver reported {}", ErrorCode(s.error)));
            }
            _ => {
                t.file.blocks_done = (0..s.blocks)
                    .filter(|&i| transfer::bit(&s.bitmap, i))
                    .count() as u32;
                self.shared.emit(Event::TransferProgress {
                    id: t.id.clone(),
                    direction: "out",
                    blocks_done: t.file.blocks_done,
                    blocks_total: t.file.blocks_total,
                });
                self.record(t)?;
                return Ok(false);
            }
        }
        t.file.completed_at_ms = Some(crate::time::unix_ms());
        self.record(t)?;
        self.shared.emit(Event::TransferFinished {
            id: t.id.clone(),
            direction: "out",
            state: t.file.state,
            error: t.file.error.clone(),
        });
        Ok(true)
    }

    async fn send_file(&mut self, mut t: Outgoing) -> Result<(), Attempt> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(&t.id, &mut id).map_err(|_| store::Error::Corrupt("transfer id"))?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&t.file.sha256, &mut hash)
            .map_err(|_| store::Error::Corrupt("transfer hash"))?;
        t.sessions += 1;
        t.file.state = State::Active;
        self.record(&t)?;
        self.writer
            .send(&Inner::FileMeta(FileMeta {
                transfer_id: id,
                size: t.file.layout.size,
                hash_alg: transfer::HASH_SHA256,
                hash,
                block_size: t.file.layout.block_size,
                symbol_size: t.file.layout.symbol_size,
                repair_per_mille: t.file.layout.repair_per_mille,
                name: t.file.name.clone(),
            }))
            .await?;
        let mut status = self.status(&id, PROGRESS_TIMEOUT).await?;
        if self.apply(&mut t, &status)? {
            return Ok(());
        }
        let per_frame = (CHUNK_PAYLOAD / fec::packet_len(t.file.layout.symbol_size))
            * fec::packet_len(t.file.layout.symbol_size);
        let mut sent: Vec<u32> = Vec::new();
        let mut pace = Pace::new(self.shared.cfg.max_send_rate_kib);
        for block in 0..t.file.blocks_total {
            if transfer::bit(&status.bitmap, block) {
                continue;
            }
            // Stay at most FILE_WINDOW_BLOCKS ahead of what the receiver confirmed.
            while sent
                .iter()
                .filter(|&&b| !transfer::bit(&status.bitmap, b))
                .count()
                >= transfer::FILE_WINDOW_BLOCKS as usize
            {
                status = self.status(&id, PROGRESS_TIMEOUT).await?;
                if self.apply(&mut t, &status)? {
                    return Ok(());
                }
            }
            let (path, layout) = (t.path.clone(), t.file.layout);
            let packets =
                tokio::task::spawn_blocking(move || transfer::encode_block(&path, &layout, block))
                    .await
                    .map_err(std::io::Error::other)??;
            for chunk in packets.chunks(per_frame) {
                self.writer
                    .queue(&Inner::FileChunk(crate::wire::FileChunk {
                        transfer_id: id,
                        block,
                        packets: bytes::Bytes::copy_from_slice(chunk),
                    }))?;
                if self.writer.queued_bytes() >= 1 << 20 {
                    self.writer.flush().await?;
                }
            }
            self.writer.flush().await?;
            t.bytes_sent += packets.len() as u64;
            sent.push(block);
            self.record(&t)?;
            pace.sent(packets.len() as u64).await;
        }
        loop {
            status = self.status(&id, FINISH_TIMEOUT).await?;
            if self.apply(&mut t, &status)? {
                return Ok(());
            }
        }
    }
}
