//! The inbox: received messages, and per (sender, epoch) the highest sequence number stored, which
//! makes delivery exactly-once across retries and restarts (`protocols/data-v1.md` §5). A message
//! and its high-water mark are written in one transaction.
//!
//! After a start that accepted lost data (`store-v1.md`), a sender whose sequence numbers run
//! ahead of what is left is asked once to send again from the first one missing (RESYNC,
//! `data-v1.md` §5.1); what it can no longer send is skipped the next time, never shown twice.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use super::{Error, Via, peer_key};
use crate::{
    broadcast::{Broadcast, Subscription},
    wire::Data,
};

pub const TREE: &str = "inbox";
pub const HWM_TREE: &str = "inbox_hwm";
/// After lost data: the (sender, epoch) pairs asked to send again, with the sequence asked from.
pub const RESYNC_TREE: &str = "inbox_resync";
/// New-message notifications buffered per subscriber.
pub const NOTIFY_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Local position in this inbox (increasing), for `?after=`.
    pub seq: u64,
    /// The sender's message id, hex.
    pub id: String,
    pub from: PeerId,
    pub body: String,
    pub sent_at_ms: u64,
    pub received_at_ms: u64,
    #[serde(flatten)]
    pub via: Via,
    /// The group it was sent to, for a group message (`groups-v1.md` §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::wire::GroupTag>,
}

/// What became of a received DATA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Stored(Box<Message>),
    /// New, counted as received, and not kept here (group log traffic, or a group message from
    /// someone who is no member).
    Taken,
    /// Already stored earlier (the sender missed our ACK).
    Duplicate,
    /// The sender skipped sequence numbers; `expected` is the next one we can take.
    Gap {
        expected: u64,
    },
    /// This inbox lost data and the sender runs ahead of what is left: ask it to send again
    /// from `next` (asked once per sender and epoch).
    Resync {
        next: u64,
    },
}

#[derive(Clone)]
pub struct Inbox {
    db: super::Trees,
    committer: super::Committer,
    messages: sled::Tree,
    hwm: sled::Tree,
    resync: sled::Tree,
    /// This database started once on lost data (`meta/data_loss_accepted`).
    lost_data: bool,
    notify: Broadcast<Message>,
}

fn hwm_key(from: &PeerId, epoch: u64) -> Vec<u8> {
    let mut k = peer_key(from);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

impl Inbox {
    pub(super) fn open(
        db: &super::Trees,
        committer: super::Committer,
        notify: Broadcast<Message>,
    ) -> Result<Self, Error> {
        let lost_data = db
            .open_tree(super::META_TREE)?
            .contains_key(super::commit::LOSS_KEY)?;
        Ok(Self {
            db: db.clone(),
            committer,
            messages: db.open_tree(TREE)?,
            hwm: db.open_tree(HWM_TREE)?,
            resync: db.open_tree(RESYNC_TREE)?,
            lost_data,
            notify,
        })
    }

    /// Stores DATA (or DATA_VIA) frame `d` from `from` if its `seq` is the next one of
    /// `(from, d.epoch)`; not durable until [`Inbox::flush`].
    pub fn accept(&self, from: &PeerId, d: &Data) -> Result<Accepted, Error> {
        self.accept_as(from, d, true)
    }

    /// [`Self::accept`], keeping the message in the inbox only if `keep`: either way it counts as
    /// received, once.
    pub fn accept_as(&self, from: &PeerId, d: &Data, keep: bool) -> Result<Accepted, Error> {
        let (epoch, seq, msg_id, sent_at_ms, body) =
            (d.epoch, d.seq, &d.msg_id, d.sent_at_ms, d.body.as_str());
        let via = &d.via;
        let key = hwm_key(from, epoch);
        let local = self.db.generate_id()? + 1; // from 1: `after = 0` lists everything
        let received_at_ms = crate::time::unix_ms();
        let lost_data = self.lost_data;
        let result =
            (&self.messages, &self.hwm, &self.resync).transaction(|(messages, hwm, resync)| {
                let last = hwm.get(&key)?.map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
                });
                if seq <= last {
                    return Ok(Accepted::Duplicate);
                }
                if seq != last + 1 {
                    if !lost_data {
                        return Ok(Accepted::Gap { expected: last + 1 });
                    }
                    if resync.get(&key)?.is_none() {
                        resync.insert(key.as_slice(), &(last + 1).to_be_bytes())?;
                        return Ok(Accepted::Resync { next: last + 1 });
                    }
                    // Asked already: the sender sent again what it still had, and this is the
                    // first of it. What lies between is gone for good; take this one.
                    tracing::warn!(
                        sender = %from, epoch, first_missing = last + 1, next = seq,
                        "messages lost with the database could not be sent again"
                    );
                }
                if lost_data {
                    resync.remove(key.as_slice())?;
                }
                if !keep {
                    hwm.insert(key.as_slice(), &seq.to_be_bytes())?;
                    return Ok(Accepted::Taken);
                }
                let msg = Message {
                    seq: local,
                    id: hex::encode(msg_id),
                    from: *from,
                    body: body.to_owned(),
                    sent_at_ms,
                    received_at_ms,
                    via: *via,
                    group: d.group,
                };
                messages.insert(
                    &local.to_be_bytes(),
                    serde_json::to_vec(&msg).expect("messages serialise"),
                )?;
                hwm.insert(key.as_slice(), &seq.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(Accepted::Stored(Box::new(msg)))
            });
        match result {
            Ok(Accepted::Stored(msg)) => {
                let _ = self.notify.send((*msg).clone());
                Ok(Accepted::Stored(msg))
            }
            Ok(other) => Ok(other),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
    }

    /// Makes every accepted message durable (call before acknowledging them).
    pub async fn flush(&self) -> Result<(), Error> {
        self.committer.commit().await
    }

    /// Up to `limit` messages with a local sequence number above `after`, oldest first.
    pub fn list(&self, after: u64, limit: usize) -> Result<Vec<Message>, Error> {
        let mut out = Vec::new();
        for item in self
            .messages
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
        {
            let (_, v) = item?;
            if let Ok(m) = serde_json::from_slice(&v) {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// New messages from now on.
    pub fn subscribe(&self) -> Subscription<Message> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn data(epoch: u64, seq: u64, msg_id: &[u8; 16], body: &str) -> Data {
        Data {
            epoch,
            seq,
            msg_id: *msg_id,
            sent_at_ms: 0,
            via: Default::default(),
            group: None,
            body: body.into(),
        }
    }

    #[test]
    fn exactly_once_per_sender_and_epoch() {
        let store = Store::temporary().unwrap();
        let inbox = store.inbox().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        let id = [1u8; 16];
        assert!(matches!(
            inbox.accept(&a, &data(9, 1, &id, "x")).unwrap(),
            Accepted::Stored(_)
        ));
        assert_eq!(
            inbox.accept(&a, &data(9, 1, &id, "x")).unwrap(),
            Accepted::Duplicate
        );
        assert_eq!(
            inbox.accept(&a, &data(9, 3, &id, "z")).unwrap(),
            Accepted::Gap { expected: 2 }
        );
        assert!(matches!(
            inbox.accept(&a, &data(9, 2, &id, "y")).unwrap(),
            Accepted::Stored(_)
        ));
        // Another epoch of the same sender (its database was recreated) starts over at 1.
        assert!(matches!(
            inbox.accept(&a, &data(10, 1, &id, "new")).unwrap(),
            Accepted::Stored(_)
        ));
        assert!(matches!(
            inbox.accept(&b, &data(9, 1, &id, "b")).unwrap(),
            Accepted::Stored(_)
        ));
        let all = inbox.list(0, 100).unwrap();
        assert_eq!(
            all.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["x", "y", "new", "b"]
        );
        let after = inbox.list(all[1].seq, 100).unwrap();
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn after_lost_data_a_sender_is_asked_once_to_send_again() {
        let store = Store::temporary().unwrap();
        store
            .meta()
            .unwrap()
            .insert(crate::store::commit::LOSS_KEY, b"{}".as_slice())
            .unwrap();
        let inbox = store.inbox().unwrap();
        let a = PeerId::random();
        let id = [2u8; 16];
        // The sender runs ahead (its ACKed messages 1..=20 were lost here): asked from 1, once.
        assert_eq!(
            inbox.accept(&a, &data(5, 21, &id, "21")).unwrap(),
            Accepted::Resync { next: 1 }
        );
        // It sends again from 1: taken in order; a repeat is a duplicate.
        for seq in 1..=3 {
            assert!(matches!(
                inbox
                    .accept(&a, &data(5, seq, &id, &seq.to_string()))
                    .unwrap(),
                Accepted::Stored(_)
            ));
        }
        assert_eq!(
            inbox.accept(&a, &data(5, 2, &id, "2")).unwrap(),
            Accepted::Duplicate
        );
        // A gap after that is asked about again (once), then taken: 4..=9 are gone for good.
        assert_eq!(
            inbox.accept(&a, &data(5, 10, &id, "10")).unwrap(),
            Accepted::Resync { next: 4 }
        );
        assert!(matches!(
            inbox.accept(&a, &data(5, 10, &id, "10")).unwrap(),
            Accepted::Stored(_)
        ));
        let bodies: Vec<String> = inbox
            .list(0, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, ["1", "2", "3", "10"]);
        // Without lost data a gap is a protocol error, as before.
        let b = PeerId::random();
        let fresh = Store::temporary().unwrap().inbox().unwrap();
        assert_eq!(
            fresh.accept(&b, &data(5, 2, &id, "x")).unwrap(),
            Accepted::Gap { expected: 1 }
        );
    }
}
