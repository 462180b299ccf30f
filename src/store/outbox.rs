//! The outbox: messages queued for peers, in order per destination, kept until the peer's ACK covers
//! them (`protocols/data-v1.md` §5). Delivered messages move to a bounded history so that
//! `commucat outbox` can show them as delivered.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use super::{Error, Via, peer_key};

pub const TREE: &str = "outbox";
pub const SEQ_TREE: &str = "outbox_seq";
pub const SENT_TREE: &str = "outbox_sent";
/// Key in the `meta` tree holding this database's outbox epoch.
pub const EPOCH_KEY: &[u8] = b"outbox_epoch";
/// Delivered messages remembered for `commucat outbox`.
pub const MAX_SENT_HISTORY: usize = 10_000;
/// Messages queued for one peer at most.
pub const MAX_QUEUED_PER_PEER: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Random message id, hex.
    pub id: String,
    pub to: PeerId,
    /// Position among all messages from this outbox to `to`, from 1.
    pub seq: u64,
    pub body: String,
    pub created_at_ms: u64,
    #[serde(flatten)]
    pub via: Via,
    /// The group it belongs to (a group message, or group log traffic: `groups-v1.md` §6, §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::wire::GroupTag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Delivered,
}

/// A row of `GET /v1/outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub message: Message,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<u64>,
}

#[derive(Clone)]
pub struct Outbox {
    db: super::Trees,
    committer: super::Committer,
    queue: sled::Tree,
    seqs: sled::Tree,
    sent: sled::Tree,
    epoch: u64,
}

fn queue_key(peer: &PeerId, seq: u64) -> Vec<u8> {
    let mut k = peer_key(peer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Outbox {
    pub(super) fn open(db: &super::Trees, committer: super::Committer) -> Result<Self, Error> {
        let meta = db.open_tree(super::META_TREE)?;
        let epoch = match meta.get(EPOCH_KEY)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => {
                // A fresh database gets a fresh epoch, so a receiver never mistakes its sequence
                // numbers for those of an outbox that was lost.
                let epoch: u64 = rand::random::<u64>() | 1;
                meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
                epoch
            }
        };
        Ok(Self {
            db: db.clone(),
            committer,
            queue: db.open_tree(TREE)?,
            seqs: db.open_tree(SEQ_TREE)?,
            sent: db.open_tree(SENT_TREE)?,
            epoch,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Queues `body` for `to`, naming the light clients in `via` if any (then it is sent as
    /// DATA_VIA): the sequence number and the message are written in one transaction.
    pub fn enqueue(&self, to: PeerId, body: String, via: Via) -> Result<Message, Error> {
        self.enqueue_tagged(to, body, via, None)
    }

    /// [`Self::enqueue`] with a group tag.
    pub fn enqueue_tagged(
        &self,
        to: PeerId,
        body: String,
        via: Via,
        group: Option<crate::wire::GroupTag>,
    ) -> Result<Message, Error> {
        let mut out = self.enqueue_all(&[to], body, via, group)?;
        Ok(out.pop().expect("one message for one peer"))
    }

    /// The same message queued for each of `peers` (a group's members) in one transaction: fewer
    /// transactions, which in sled 0.34 contend with flushes.
    pub fn enqueue_all(
        &self,
        peers: &[PeerId],
        body: String,
        via: Via,
        group: Option<crate::wire::GroupTag>,
    ) -> Result<Vec<Message>, Error> {
        if peers
            .iter()
            .any(|to| self.pending_count(to) >= MAX_QUEUED_PER_PEER)
        {
            return Err(Error::Full("outbox for this peer", MAX_QUEUED_PER_PEER));
        }
        let created_at_ms = crate::time::unix_ms();
        let ids: Vec<String> = peers
            .iter()
            .map(|_| hex::encode(rand::random::<[u8; 16]>()))
            .collect();
        // Noted: a delivery worker may read it before the sender's commit finished, and then
        // commits it itself before sending (`pending_durable`).
        let result = self.committer.noted(|| {
            (&self.queue, &self.seqs).transaction(|(queue, seqs)| {
                let mut out = Vec::with_capacity(peers.len());
                for (to, id) in peers.iter().zip(&ids) {
                    let pk = peer_key(to);
                    let seq = match seqs.get(&pk)? {
                        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                        None => 1,
                    };
                    seqs.insert(pk.as_slice(), &seq.to_be_bytes())?;
                    let msg = Message {
                        id: id.clone(),
                        to: *to,
                        seq,
                        body: body.clone(),
                        created_at_ms,
                        via,
                        group,
                    };
                    let value = serde_json::to_vec(&msg).expect("messages serialise");
                    queue.insert(queue_key(to, seq), value)?;
                    out.push(msg);
                }
                Ok::<_, ConflictableTransactionError<()>>(out)
            })
        });
        match result {
            Ok(msgs) => Ok(msgs),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
    }

    /// As [`Self::pending`], once every message returned is durable: what a worker sends. A
    /// message the sender's commit covered costs nothing more; one it has not (yet) is committed
    /// here first.
    pub async fn pending_durable(
        &self,
        to: &PeerId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, Error> {
        let (batch, mark) = self.committer.read_noted(|| self.pending(to, after, limit));
        let batch = batch?;
        if !batch.is_empty() {
            self.committer.commit_through(mark).await?;
        }
        Ok(batch)
    }

    /// Up to `limit` queued messages for `to` with a sequence number above `after`, in order.
    pub fn pending(&self, to: &PeerId, after: u64, limit: usize) -> Result<Vec<Message>, Error> {
        let start = queue_key(to, after.saturating_add(1));
        let end = queue_key(to, u64::MAX);
        let mut out = Vec::new();
        for item in self.queue.range(start..=end).take(limit) {
            let (_, v) = item?;
            if let Ok(m) = serde_json::from_slice(&v) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn pending_count(&self, to: &PeerId) -> usize {
        self.queue.scan_prefix(peer_key(to)).count()
    }

    /// Peers with queued messages: one seek per peer (keys are `peer_key ‖ seq`), nothing decoded
    /// but the key's PeerId, so the delivery manager can sweep it often.
    pub fn peers_with_pending(&self) -> Result<Vec<PeerId>, Error> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut peers = Vec::new();
        let mut next = self.queue.iter().next();
        while let Some(item) = next {
            let (key, _) = item?;
            let len = key.first().map_or(0, |l| usize::from(*l));
            let peer = key.get(1..1 + len).and_then(|b| PeerId::from_bytes(b).ok());
            let Some(peer) = peer else {
                // Not a key this code writes: step over it.
                next = self.queue.range((Excluded(key.to_vec()), Unbounded)).next();
                continue;
            };
            peers.push(peer);
            let last = queue_key(&peer, u64::MAX);
            next = self.queue.range((Excluded(last), Unbounded)).next();
        }
        Ok(peers)
    }

    /// Removes every queued message to `to` up to `seq` (an ACK) and records them as delivered.
    /// Returns how many were removed.
    pub fn acknowledge(&self, to: &PeerId, seq: u64) -> Result<usize, Error> {
        let now = crate::time::unix_ms();
        let mut removed = 0;
        let keys: Vec<_> = self
            .queue
            .range(queue_key(to, 0)..=queue_key(to, seq))
            .filter_map(Result::ok)
            .collect();
        for (k, v) in keys {
            self.queue.remove(&k)?;
            let id = self.db.generate_id()?;
            let entry = Entry {
                message: serde_json::from_slice(&v).map_err(|_| Error::Corrupt("outbox entry"))?,
                state: State::Delivered,
                delivered_at_ms: Some(now),
            };
            self.sent.insert(
                id.to_be_bytes(),
                serde_json::to_vec(&entry).expect("entries serialise"),
            )?;
            removed += 1;
        }
        while self.sent.len() > MAX_SENT_HISTORY {
            self.sent.pop_min()?;
        }
        Ok(removed)
    }

    /// Queues again the delivered messages to `to` from sequence `next` on that the history still
    /// holds (the receiver lost them: RESYNC, `protocols/data-v1.md` §5.1). Returns how many; the
    /// first sequence then queued is the lowest of them, which may be above `next` when the
    /// history no longer reaches back that far.
    pub fn rewind(&self, to: &PeerId, next: u64) -> Result<usize, Error> {
        let mut back = Vec::new();
        for item in self.sent.iter() {
            let (k, v) = item?;
            let Ok(e) = serde_json::from_slice::<Entry>(&v) else {
                continue;
            };
            if e.message.to == *to && e.message.seq >= next {
                back.push((k, e.message));
            }
        }
        self.committer.noted(|| {
            for (k, m) in &back {
                self.queue.insert(
                    queue_key(to, m.seq),
                    serde_json::to_vec(m).expect("messages serialise"),
                )?;
                self.sent.remove(k)?;
            }
            Ok::<_, Error>(())
        })?;
        Ok(back.len())
    }

    /// Queued and (recently) delivered messages: delivered ones first, oldest first, then queued.
    pub fn list(&self, limit: usize) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        let skip = self.sent.len().saturating_sub(limit);
        for item in self.sent.iter().skip(skip) {
            let (_, v) = item?;
            if let Ok(e) = serde_json::from_slice(&v) {
                out.push(e);
            }
        }
        for item in self.queue.iter().take(limit) {
            let (_, v) = item?;
            if let Ok(message) = serde_json::from_slice(&v) {
                out.push(Entry {
                    message,
                    state: State::Queued,
                    delivered_at_ms: None,
                });
            }
        }
        Ok(out)
    }

    /// Makes everything queued so far durable (a commit, see [`super::Committer`]).
    pub async fn flush(&self) -> Result<(), Error> {
        self.committer.commit().await
    }

    /// Number of queued messages.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A worker woken before the sender's commit commits the message itself before taking it; a
    /// message a finished commit covered costs no commit more.
    #[tokio::test]
    async fn pending_durable_commits_only_what_no_commit_covered() {
        let store = Store::temporary().unwrap();
        let ob = store.outbox().unwrap();
        let peer = PeerId::random();
        ob.enqueue(peer, "one".into(), Via::default()).unwrap();
        let before = ob.committer.generation();
        let got = ob.pending_durable(&peer, 0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            ob.committer.generation(),
            before + 1,
            "committed before it is sent"
        );
        // The sender's own commit came first: nothing more to do.
        ob.enqueue(peer, "two".into(), Via::default()).unwrap();
        ob.flush().await.unwrap();
        let after_flush = ob.committer.generation();
        assert_eq!(ob.pending_durable(&peer, 0, 10).await.unwrap().len(), 2);
        assert_eq!(ob.committer.generation(), after_flush, "no second commit");
        // Nothing pending: no commit either.
        assert!(
            ob.pending_durable(&PeerId::random(), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(ob.committer.generation(), after_flush);
    }

    #[test]
    fn per_peer_sequences_and_cumulative_acks() {
        let store = Store::temporary().unwrap();
        let ob = store.outbox().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        for i in 1..=5 {
            assert_eq!(
                ob.enqueue(a, format!("a{i}"), Via::default()).unwrap().seq,
                i
            );
        }
        assert_eq!(ob.enqueue(b, "b1".into(), Via::default()).unwrap().seq, 1);
        let p = ob.pending(&a, 2, 10).unwrap();
        assert_eq!(p.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(ob.acknowledge(&a, 3).unwrap(), 3);
        assert_eq!(ob.pending(&a, 0, 10).unwrap().len(), 2);
        assert_eq!(
            ob.pending(&b, 0, 10).unwrap().len(),
            1,
            "other peers untouched"
        );
        let list = ob.list(100).unwrap();
        assert_eq!(
            list.iter().filter(|e| e.state == State::Delivered).count(),
            3
        );
        assert_eq!(list.iter().filter(|e| e.state == State::Queued).count(), 3);
        // Sequence numbers keep growing after acknowledgements.
        assert_eq!(ob.enqueue(a, "a6".into(), Via::default()).unwrap().seq, 6);
        let mut peers = ob.peers_with_pending().unwrap();
        peers.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(peers, want);
    }

    #[test]
    fn the_epoch_survives_a_reopen_and_differs_between_databases() {
        let dir = tempfile::tempdir().unwrap();
        let e1 = Store::open(dir.path(), crate::store::Options::cache(8))
            .unwrap()
            .outbox()
            .unwrap()
            .epoch();
        let e2 = Store::open(dir.path(), crate::store::Options::cache(8))
            .unwrap()
            .outbox()
            .unwrap()
            .epoch();
        assert_eq!(e1, e2);
        let other = Store::temporary().unwrap().outbox().unwrap().epoch();
        assert_ne!(e1, other);
    }
}
