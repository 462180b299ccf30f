//! Groups on this node (`protocols/groups-v1.md`): the logs it holds, changes it signs and fans
//! out, group messages it fans out through the outbox (one copy per member, so each arrives
//! exactly once, also at members offline at the time), and what it does with group traffic that
//! arrives: messages from members go to the inbox, log entries into the log, and a head other than
//! its own starts a sync.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    crypto::LocalKeys,
    groups::{Entry, GroupId, Hash, Head, Log, Op, Reject, State},
    store::{self, GroupLogs, Outbox, outbox},
    wire::{GroupTag, Via, group_kind},
};

/// Groups one node holds at most.
pub const MAX_GROUPS: usize = 256;
/// Hex bytes of entries in one ENTRIES message at most (under `wire::MAX_MESSAGE_BYTES`).
const MAX_ENTRIES_BODY: usize = 60_000;
/// Sync requests remembered (to ask each peer once per pair of heads); forgotten all at once past
/// this.
const MAX_REMEMBERED_SYNCS: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no group {0} on this node")]
    NoSuchGroup(GroupId),
    #[error("this node is not a member of group {0}")]
    NotMember(GroupId),
    #[error("only an admin of group {0} can do that")]
    NotAdmin(GroupId),
    #[error("{MAX_GROUPS} groups are held already")]
    TooMany,
    #[error("the group's log refused the change: {0}")]
    Refused(Reject),
    #[error("a group name has 1 to 64 bytes")]
    BadName,
    #[error("message body of {0} bytes exceeds {max} bytes", max = crate::wire::MAX_MESSAGE_BYTES)]
    TooLarge(usize),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Our head's digest and a peer's, when we asked it to sync.
type HeadPair = ([u8; 32], [u8; 32]);

/// `GET /v1/groups` row, and `GET /v1/groups/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: GroupId,
    pub name: String,
    pub members: Vec<PeerId>,
    pub admins: Vec<PeerId>,
    pub head: Head,
    /// Entries in the log.
    pub entries: usize,
}

/// Groups, shared by the data service's tasks.
pub struct Groups {
    keys: Arc<LocalKeys>,
    logs: Mutex<HashMap<GroupId, Log>>,
    stored: GroupLogs,
    outbox: Outbox,
    wake: mpsc::Sender<PeerId>,
    /// The heads (ours, theirs) we last asked a peer to sync from, per group: asking again
    /// before either changes would bring nothing new, and two logs that cannot merge (a creator
    /// who signed two `create`s) would otherwise ask each other forever.
    asked: Mutex<HashMap<(GroupId, PeerId), HeadPair>>,
}

fn info(log: &Log) -> GroupInfo {
    let s = log.state();
    GroupInfo {
        id: log.group(),
        name: s.name,
        members: s.members.into_iter().collect(),
        admins: s.admins.into_iter().collect(),
        head: log.head(),
        entries: log.len(),
    }
}

/// Admits `entries` in any order (an entry after its predecessor); those that never fit are
/// returned with why.
fn admit_all(log: &mut Log, mut entries: Vec<Entry>) -> (Vec<Entry>, Vec<Reject>) {
    let mut taken = Vec::new();
    loop {
        let before = entries.len();
        let mut why = Vec::new();
        entries.retain(|e| match log.admit(e.clone()) {
            Ok(true) => {
                taken.push(e.clone());
                false
            }
            Ok(false) => false,
            Err(r) => {
                why.push(r);
                true
            }
        });
        if entries.is_empty() || entries.len() == before {
            return (taken, why);
        }
    }
}

impl Groups {
    /// Loads the stored logs (each entry verified again; what no longer fits is dropped).
    pub fn open(
        keys: Arc<LocalKeys>,
        stored: GroupLogs,
        outbox: Outbox,
        wake: mpsc::Sender<PeerId>,
    ) -> Result<Self, store::Error> {
        let mut by_group: HashMap<GroupId, Vec<Entry>> = HashMap::new();
        for (group, bytes) in stored.all()? {
            match Entry::verify(&bytes) {
                Ok(e) => by_group.entry(GroupId(group)).or_default().push(e),
                Err(r) => {
                    tracing::warn!(group = %GroupId(group), error = %r, "dropping a stored group entry")
                }
            }
        }
        let logs = by_group
            .into_iter()
            .map(|(id, entries)| {
                let mut log = Log::new(id);
                admit_all(&mut log, entries);
                (id, log)
            })
            .collect();
        Ok(Self {
            keys,
            logs: Mutex::new(logs),
            stored,
            outbox,
            wake,
            asked: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Log>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn me(&self) -> PeerId {
        self.keys.identity.peer_id()
    }

    /// Every group this node holds.
    pub fn list(&self) -> Vec<GroupInfo> {
        let mut all: Vec<GroupInfo> = self.lock().values().map(info).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        all
    }

    pub fn get(&self, id: &GroupId) -> Result<GroupInfo, Error> {
        self.lock().get(id).map(info).ok_or(Error::NoSuchGroup(*id))
    }

    /// A new group with this node as its first member and admin.
    pub async fn create(&self, name: &str) -> Result<GroupInfo, Error> {
        if name.is_empty() || name.len() > crate::groups::entry::MAX_NAME_BYTES {
            return Err(Error::BadName);
        }
        let id = GroupId::random();
        {
            let mut logs = self.lock();
            if logs.len() >= MAX_GROUPS {
                return Err(Error::TooMany);
            }
            logs.insert(id, Log::new(id));
        }
        self.change(
            id,
            Op::Create {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// Signs a change of the group's membership, takes it into the log, and sends it to everyone
    /// it concerns: the members after it, a removed member, and a new member the whole log.
    pub async fn change(&self, id: GroupId, op: Op) -> Result<GroupInfo, Error> {
        let (entry, before, after, whole) = {
            let mut logs = self.lock();
            let log = logs.get_mut(&id).ok_or(Error::NoSuchGroup(id))?;
            let before = log.state();
            let me = self.me();
            match &op {
                Op::Create { .. } => {}
                Op::Leave if before.members.contains(&me) => {}
                Op::Leave => return Err(Error::NotMember(id)),
                _ if !before.admins.contains(&me) => return Err(Error::NotAdmin(id)),
                _ => {}
            }
            let (seq, prev) = log.next();
            let entry = Entry::sign(
                &self.keys.identity,
                id,
                seq,
                prev,
                op,
                crate::time::unix_ms(),
            );
            log.admit(entry.clone()).map_err(Error::Refused)?;
            let whole: Vec<Entry> = log.entries().cloned().collect();
            (entry, before, log.state(), whole)
        };
        self.stored.put(&id.0, &entry.hash, entry.as_bytes())?;
        let head = self.get(&id)?.head;
        let me = self.me();
        let mut to: HashSet<PeerId> = after.members.union(&before.members).copied().collect();
        to.remove(&me);
        for peer in to {
            let new_member = !before.members.contains(&peer);
            let entries = if new_member {
                whole.as_slice()
            } else {
                std::slice::from_ref(&entry)
            };
            self.send_entries(id, head, peer, entries)?;
        }
        self.stored.flush().await?;
        self.outbox.flush().await?;
        self.get(&id)
    }

    fn tag(id: GroupId, kind: u8, sender_seq: u64, head: Head) -> GroupTag {
        GroupTag {
            group: id.0,
            kind,
            sender_seq,
            head_seq: head.seq,
            head_digest: head.digest,
        }
    }

    fn enqueue(&self, to: PeerId, body: String, tag: GroupTag) -> Result<outbox::Message, Error> {
        let m = self
            .outbox
            .enqueue_tagged(to, body, Via::default(), Some(tag))?;
        let _ = self.wake.try_send(to);
        Ok(m)
    }

    /// Entries as ENTRIES messages (hex, one per line), as many as they need.
    fn send_entries(
        &self,
        id: GroupId,
        head: Head,
        to: PeerId,
        entries: &[Entry],
    ) -> Result<(), Error> {
        let mut body = String::new();
        for e in entries {
            let line = hex::encode(e.as_bytes());
            if !body.is_empty() && body.len() + line.len() + 1 > MAX_ENTRIES_BODY {
                self.enqueue(
                    to,
                    std::mem::take(&mut body),
                    Self::tag(id, group_kind::ENTRIES, 0, head),
                )?;
            }
            body.push_str(&line);
            body.push('\n');
        }
        if !body.is_empty() {
            self.enqueue(to, body, Self::tag(id, group_kind::ENTRIES, 0, head))?;
        }
        Ok(())
    }

    /// A message to every other member, each copy through the outbox; this node's number for it
    /// and the copies.
    pub async fn send(
        &self,
        id: GroupId,
        body: String,
    ) -> Result<(u64, Vec<outbox::Message>), Error> {
        if body.len() > crate::wire::MAX_MESSAGE_BYTES {
            return Err(Error::TooLarge(body.len()));
        }
        let (state, head) = {
            let logs = self.lock();
            let log = logs.get(&id).ok_or(Error::NoSuchGroup(id))?;
            (log.state(), log.head())
        };
        let me = self.me();
        if !state.members.contains(&me) {
            return Err(Error::NotMember(id));
        }
        let seq = self.stored.next_seq(&id.0)?;
        let mut sent = Vec::new();
        for peer in state.members.iter().filter(|p| **p != me) {
            sent.push(self.enqueue(
                *peer,
                body.clone(),
                Self::tag(id, group_kind::MESSAGE, seq, head),
            )?);
        }
        self.stored.flush().await?;
        self.outbox.flush().await?;
        Ok((seq, sent))
    }

    /// Whether a group message from `from` is kept: it must be a member of a group this node
    /// holds. A head other than ours asks `from` for what we lack.
    pub fn admits_message(&self, from: &PeerId, tag: &GroupTag) -> bool {
        let id = GroupId(tag.group);
        let (member, differs) = match self.lock().get(&id) {
            Some(log) => (
                log.state().members.contains(from),
                log.head().digest != tag.head_digest,
            ),
            None => (false, false),
        };
        if member && differs {
            self.ask_sync(id, *from, tag.head_digest);
        }
        member
    }

    /// Log traffic from `from`: entries, a sync request, or a head.
    pub async fn control(&self, from: PeerId, tag: &GroupTag, body: &str) {
        let id = GroupId(tag.group);
        let result = match tag.kind {
            group_kind::ENTRIES => self.take_entries(id, from, tag, body).await,
            group_kind::SYNC => self.answer_sync(id, from, tag, body),
            group_kind::HEAD => {
                if self
                    .lock()
                    .get(&id)
                    .is_some_and(|l| l.head().digest != tag.head_digest)
                {
                    self.ask_sync(id, from, tag.head_digest);
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(group = %id, %from, error = %e, "group traffic not handled");
        }
    }

    async fn take_entries(
        &self,
        id: GroupId,
        from: PeerId,
        tag: &GroupTag,
        body: &str,
    ) -> Result<(), Error> {
        let mut entries = Vec::new();
        for line in body.lines().filter(|l| !l.is_empty()) {
            match hex::decode(line)
                .map_err(|_| Reject::Malformed)
                .and_then(|b| Entry::verify(&b))
            {
                Ok(e) => entries.push(e),
                Err(r) => tracing::info!(group = %id, %from, error = %r, "group entry refused"),
            }
        }
        let me = self.me();
        let (taken, head, before, after) = {
            let mut logs = self.lock();
            if !logs.contains_key(&id) {
                // A group we are not in: only a log that adds us makes us hold it.
                let adds_me = entries.iter().any(|e| e.op == Op::Add(me));
                if !adds_me || logs.len() >= MAX_GROUPS {
                    return Ok(());
                }
                logs.insert(id, Log::new(id));
            }
            let log = logs.get_mut(&id).expect("inserted above");
            let before = log.state();
            let (taken, refused) = admit_all(log, entries);
            for r in refused {
                tracing::info!(group = %id, %from, error = %r, "group entry refused");
            }
            (taken, log.head(), before, log.state())
        };
        for e in &taken {
            self.stored.put(&id.0, &e.hash, e.as_bytes())?;
        }
        self.stored.flush().await?;
        if head.digest != tag.head_digest {
            self.ask_sync(id, from, tag.head_digest);
        }
        // Members someone else added may lack what we hold: show them our head.
        for added in after
            .members
            .difference(&before.members)
            .filter(|p| **p != me)
        {
            let _ = self.enqueue(
                *added,
                String::new(),
                Self::tag(id, group_kind::HEAD, 0, head),
            );
        }
        Ok(())
    }

    /// Sends `to` the hashes of our entries: it answers with what we lack. Once per pair of heads.
    fn ask_sync(&self, id: GroupId, to: PeerId, theirs: [u8; 32]) {
        let Some((hashes, head)) = self.lock().get(&id).map(|log| {
            let hashes: String = log.entries().map(|e| hex::encode(e.hash)).collect();
            (hashes, log.head())
        }) else {
            return;
        };
        {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if asked.get(&(id, to)) == Some(&(head.digest, theirs)) {
                return;
            }
            if asked.len() >= MAX_REMEMBERED_SYNCS {
                asked.clear();
            }
            asked.insert((id, to), (head.digest, theirs));
        }
        if let Err(e) = self.enqueue(to, hashes, Self::tag(id, group_kind::SYNC, 0, head)) {
            tracing::warn!(group = %id, %to, error = %e, "cannot ask for a group sync");
        }
    }

    /// `from` holds the entries whose hashes `body` lists: send it the others, if it belongs to
    /// the log; and ask for what it holds that we lack.
    fn answer_sync(
        &self,
        id: GroupId,
        from: PeerId,
        tag: &GroupTag,
        body: &str,
    ) -> Result<(), Error> {
        let known: HashSet<Hash> = body
            .as_bytes()
            .chunks(64)
            .filter_map(|c| {
                let mut h = [0; 32];
                hex::decode_to_slice(c, &mut h).ok().map(|()| h)
            })
            .collect();
        let (missing, head, they_have_more) = {
            let logs = self.lock();
            let Some(log) = logs.get(&id) else {
                return Ok(());
            };
            let involved = log
                .entries()
                .any(|e| e.signer.peer_id == from || e.op.subject() == Some(&from));
            if !involved {
                return Ok(());
            }
            let missing: Vec<Entry> = log.missing_from(&known).cloned().collect();
            let they_have_more = known.iter().any(|h| !log.contains(h));
            (missing, log.head(), they_have_more)
        };
        if !missing.is_empty() {
            self.send_entries(id, head, from, &missing)?;
        }
        if they_have_more {
            self.ask_sync(id, from, tag.head_digest);
        }
        Ok(())
    }

    /// The state of a group (tests, the API).
    pub fn state(&self, id: &GroupId) -> Option<State> {
        self.lock().get(id).map(Log::state)
    }
}
