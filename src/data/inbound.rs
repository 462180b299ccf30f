//! The responder's side of a session (`protocols/data-v1.md` §5–§6): messages into the inbox (ACKed
//! in batches, only once durable), files into partial files (decoded and written on the blocking
//! pool), PING answered. Any protocol violation ends this session with an ERROR; the node and other
//! sessions carry on.

use std::{collections::HashMap, sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    session::{self, Writer},
    shared::{Event, Shared},
    transfer::{self, Receiving},
};
use crate::{
    store::inbox::Accepted,
    wire::{Data, ErrorCode, FileStatus, Inner, file_state},
};

/// A session without any frame for this long ends (PING keeps it alive).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages acknowledged together at most.
pub const ACK_BATCH: u32 = 64;
/// Transfers one session may carry at once.
pub const MAX_TRANSFERS_PER_SESSION: usize = 4;

/// What arrived and is not acknowledged yet. The ACK goes out as soon as no further frame is
/// waiting to be read (or [`ACK_BATCH`] are unacknowledged): one flush covers whatever arrived
/// together, and a lone message is acknowledged at once.
struct Acks {
    pending: Option<(u64, u64)>,
    unacked: u32,
}

struct Receiver<'a, S> {
    shared: &'a Arc<Shared>,
    peer: PeerId,
    writer: Writer<S>,
    acks: Acks,
    files: HashMap<[u8; 16], (Box<Receiving>, u32)>,
}

/// Serves one inbound session until it ends.
pub(super) async fn serve<S>(shared: &Arc<Shared>, peer: PeerId, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let session = match session::respond(stream, &shared.session, peer).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "inbound session refused");
            if let Some(code) = e.code() {
                shared.emit(Event::SessionRejected {
                    peer,
                    code: code.0,
                    reason: e.to_string(),
                });
            }
            return;
        }
    };
    let mut reader = session.reader;
    let mut rx = Receiver {
        shared,
        peer,
        writer: session.writer,
        acks: Acks {
            pending: None,
            unacked: 0,
        },
        files: HashMap::new(),
    };
    loop {
        let ack_due = rx.acks.pending.is_some();
        // Biased: a frame already waiting is read before the ACK goes out (reading is cancel
        // safe: the frame decoder keeps its buffer).
        let result = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            frame = tokio::time::timeout(IDLE_TIMEOUT, reader.recv()) => match frame {
                Err(_) => Err(session::Error::Timeout),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(Inner::Close(_)))) => break,
                Ok(Ok(Some(inner))) => rx.handle(inner).await,
                Ok(Err(e)) => Err(e),
            },
            () = std::future::ready(()), if ack_due => rx.ack().await,
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "inbound session ended");
            if matches!(e, session::Error::Resynced) {
                break;
            }
            if let session::Error::Protocol { code, detail } = &e {
                rx.writer.fail(*code, detail).await;
                shared.emit(Event::SessionRejected {
                    peer,
                    code: code.0,
                    reason: detail.clone(),
                });
            }
            if matches!(e, session::Error::Timeout) {
                rx.writer.fail(ErrorCode::TIMEOUT, "idle").await;
            }
            break;
        }
    }
    // Whatever was stored is acknowledged if we still can.
    let _ = rx.ack().await;
    rx.writer.close().await;
}

fn protocol(code: ErrorCode, detail: impl Into<String>) -> session::Error {
    session::Error::Protocol {
        code,
        detail: detail.into(),
    }
}

impl<S: AsyncWrite> Receiver<'_, S> {
    async fn ack(&mut self) -> Result<(), session::Error> {
        let Some((epoch, seq)) = self.acks.pending.take() else {
            return Ok(());
        };
        // Durable before acknowledged.
        self.shared
            .inbox
            .flush()
            .await
            .map_err(|e| protocol(ErrorCode::STORAGE, e.to_string()))?;
        self.acks.unacked = 0;
        self.writer.send(&Inner::Ack { epoch, seq }).await
    }

    async fn handle(&mut self, inner: Inner) -> Result<(), session::Error> {
        match inner {
            Inner::Data(d) => self.data(d).await,
            Inner::FileMeta(meta) => self.file_meta(meta).await,
            Inner::FileChunk(chunk) => {
                self.file_chunk(chunk.transfer_id, chunk.block, chunk.packets)
                    .await
            }
            Inner::Ping(n) => self.writer.send(&Inner::Pong(n)).await,
            Inner::Pong(_) | Inner::Presence { .. } => Ok(()),
            // Taken by the reader; the answer (KEY_REPLY) goes out with this flush.
            Inner::KeyUpdate { .. } => self.writer.flush().await,
            Inner::Auth { .. }
            | Inner::Finished
            | Inner::KeyReply { .. }
            | Inner::KeyDone
            | Inner::Ack { .. }
            | Inner::Resync { .. }
            | Inner::FileStatus(_)
            | Inner::Close(_)
            | Inner::Error { .. } => Err(protocol(
                ErrorCode::UNEXPECTED_FRAME,
                "frame not valid from the initiator",
            )),
        }
    }

    async fn data(&mut self, d: Data) -> Result<(), session::Error> {
        if let Some((epoch, _)) = self.acks.pending
            && epoch != d.epoch
        {
            self.ack().await?;
        }
        // Group traffic: a message is kept if its sender is a member; log traffic is counted as
        // received here and handled once it is (`groups-v1.md` §6, §8).
        let keep = match &d.group {
            None => true,
            Some(tag) if tag.kind == crate::wire::group_kind::MESSAGE => {
                match self.shared.groups.judge_message(&self.peer, tag) {
                    super::groups::Verdict::Keep => true,
                    super::groups::Verdict::Refuse => false,
                    // Neither kept nor counted: the sender sends it again once we caught up.
                    super::groups::Verdict::Later => {
                        return Err(protocol(
                            ErrorCode::LIMIT,
                            "this node's log of the group is behind the sender's; it is \
                             syncing: send again later",
                        ));
                    }
                }
            }
            Some(_) => false,
        };
        let accepted = self
            .shared
            .inbox
            .accept_as(&self.peer, &d, keep)
            .map_err(|e| protocol(ErrorCode::STORAGE, e.to_string()))?;
        match accepted {
            Accepted::Taken => {
                if let Some(tag) = d
                    .group
                    .as_ref()
                    .filter(|t| t.kind != crate::wire::group_kind::MESSAGE)
                {
                    self.shared.groups.control(self.peer, tag, &d.body).await;
                } else {
                    tracing::info!(peer = %self.peer, "group message from a non-member refused");
                }
            }
            Accepted::Stored(m) => self.shared.emit(Event::MessageReceived {
                id: m.id,
                from: self.peer,
                seq: m.seq,
                group: m.group.map(|t| crate::groups::GroupId(t.group)),
            }),
            Accepted::Duplicate => {}
            Accepted::Gap { expected } => {
                return Err(protocol(
                    ErrorCode::SEQUENCE_GAP,
                    format!("sequence {} when {expected} was next", d.seq),
                ));
            }
            Accepted::Resync { next } => {
                // This store lost what it had acknowledged: ask for it again, and end the session
                // so that nothing already in flight is taken out of order.
                self.writer
                    .send(&Inner::Resync {
                        epoch: d.epoch,
                        next_seq: next,
                    })
                    .await?;
                return Err(session::Error::Resynced);
            }
        }
        let seq = self.acks.pending.map_or(d.seq, |(_, s)| s.max(d.seq));
        self.acks.pending = Some((d.epoch, seq));
        self.acks.unacked += 1;
        if self.acks.unacked >= ACK_BATCH {
            self.ack().await?;
        }
        Ok(())
    }

    async fn file_meta(&mut self, meta: crate::wire::FileMeta) -> Result<(), session::Error> {
        if !self.files.contains_key(&meta.transfer_id)
            && self.files.len() >= MAX_TRANSFERS_PER_SESSION
        {
            return self
                .send_status(failed(meta.transfer_id, ErrorCode::LIMIT))
                .await;
        }
        let shared = self.shared.clone();
        let peer = self.peer;
        let transfer_id = meta.transfer_id;
        let begun = tokio::task::spawn_blocking(move || {
            Receiving::begin(
                &shared.transfers,
                &shared.downloads,
                peer,
                &meta,
                shared.cfg.max_file_bytes,
            )
        })
        .await
        .map_err(|e| protocol(ErrorCode::INTERNAL, e.to_string()))?;
        match begun {
            Ok(r) => {
                let status = r.status();
                if r.is_finished() {
                    // Already complete (or failed) earlier: tell the sender again.
                    return self.send_status(status).await;
                }
                if r.all_blocks_done() {
                    // Every block arrived before a break: only the check and the move are left.
                    self.files.insert(transfer_id, (Box::new(r), 0));
                    return self.finish(transfer_id).await;
                }
                self.files.insert(transfer_id, (Box::new(r), 0));
                self.send_status(status).await
            }
            Err(f) => {
                tracing::debug!(peer = %self.peer, error = %f, "file refused");
                self.send_status(failed(transfer_id, f.code)).await
            }
        }
    }

    async fn file_chunk(
        &mut self,
        id: [u8; 16],
        block: u32,
        packets: bytes::Bytes,
    ) -> Result<(), session::Error> {
        let Some((r, since_status)) = self.files.remove(&id) else {
            return Err(protocol(
                ErrorCode::UNEXPECTED_FRAME,
                "FILE_CHUNK of a transfer not announced in this session",
            ));
        };
        let shared = self.shared.clone();
        let (mut r, result) = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let result = r.chunk(&shared.transfers, block, &packets);
            (r, result)
        })
        .await
        .map_err(|e| protocol(ErrorCode::INTERNAL, e.to_string()))?;
        let completed = match result {
            Ok(c) => c,
            Err(f) if f.code == ErrorCode::MALFORMED => return Err(protocol(f.code, f.message)),
            Err(f) => {
                r.record.file.state = crate::store::transfers::State::Failed;
                r.record.file.error = Some(format!("{}: {}", f.code.0, f.message));
                let _ = self.shared.transfers.incoming().put(&r.record);
                return self.send_status(failed(id, f.code)).await;
            }
        };
        let since = since_status + u32::from(completed);
        let all_done = r.all_blocks_done();
        let status = r.status();
        let (done, total, rid) = (
            r.record.file.blocks_done,
            r.record.file.blocks_total,
            r.record.id.clone(),
        );
        self.files.insert(
            id,
            (
                r,
                if since >= transfer::STATUS_EVERY_BLOCKS {
                    0
                } else {
                    since
                },
            ),
        );
        if all_done {
            return self.finish(id).await;
        }
        if completed && since >= transfer::STATUS_EVERY_BLOCKS {
            self.shared.emit(Event::TransferProgress {
                id: rid,
                direction: "in",
                blocks_done: done,
                blocks_total: total,
            });
            return self.send_status(status).await;
        }
        Ok(())
    }

    async fn finish(&mut self, id: [u8; 16]) -> Result<(), session::Error> {
        let Some((mut r, _)) = self.files.remove(&id) else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _ = r.finish(&shared.transfers);
            r
        })
        .await
        .map_err(|e| protocol(ErrorCode::INTERNAL, e.to_string()))?;
        self.shared.emit(Event::TransferFinished {
            id: r.record.id.clone(),
            direction: "in",
            state: r.record.file.state,
            error: r.record.file.error.clone(),
        });
        self.send_status(r.status()).await
    }

    async fn send_status(&mut self, status: FileStatus) -> Result<(), session::Error> {
        self.writer.send(&Inner::FileStatus(status)).await
    }
}

fn failed(transfer_id: [u8; 16], code: ErrorCode) -> FileStatus {
    FileStatus {
        transfer_id,
        state: file_state::FAILED,
        error: code.0,
        blocks: 0,
        bitmap: bytes::Bytes::new(),
    }
}
