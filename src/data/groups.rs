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
    groups::{Entry, GroupId, Hash, Head, Log, Op, Reject},
    store::{self, GroupLogs, Outbox, outbox},
    wire::{GroupTag, Via, group_kind},
};

/// Groups one node holds at most.
pub const MAX_GROUPS: usize = 256;
/// Hex bytes of entries in one ENTRIES message at most (under `wire::MAX_MESSAGE_BYTES`).
const MAX_ENTRIES_BODY: usize = 60_000;
/// Groups whose entries wait for the message that adds this node (a whole log comes in several
/// messages); more are dropped.
const MAX_WAITING_GROUPS: usize = 16;
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

/// What becomes of a group message ([`Groups::judge_message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Refuse,
    /// Not now: the sender sends it again after our log caught up.
    Later,
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
    events: crate::broadcast::Broadcast<super::Event>,
    /// The heads (ours, theirs) we last asked a peer to sync from, per group: asking again
    /// before either changes would bring nothing new, and two logs that cannot merge (a creator
    /// who signed two `create`s) would otherwise ask each other forever.
    asked: Mutex<HashMap<(GroupId, PeerId), HeadPair>>,
    /// Entries of groups this node does not hold yet, waiting for the one that adds it.
    waiting: Mutex<HashMap<GroupId, Vec<Entry>>>,
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
        events: crate::broadcast::Broadcast<super::Event>,
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
            events,
            asked: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
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
        let (entry, before, after, whole, head) = {
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
            (entry, before, log.state(), whole, log.head())
        };
        self.stored.put(&id.0, &entry.hash, entry.as_bytes())?;
        let me = self.me();
        let mut to: HashSet<PeerId> = after.members.union(&before.members).copied().collect();
        to.remove(&me);
        let (new, known): (Vec<PeerId>, Vec<PeerId>) =
            to.into_iter().partition(|p| !before.members.contains(p));
        self.send_entries(id, head, &known, std::slice::from_ref(&entry))?;
        self.send_entries(id, head, &new, &whole)?;
        // One flush of the database covers the entry and the copies.
        self.outbox.flush().await?;
        let info = self.get(&id)?;
        self.changed(&info);
        Ok(info)
    }

    fn changed(&self, g: &GroupInfo) {
        let _ = self.events.send(super::Event::GroupChanged {
            group: g.id,
            head_seq: g.head.seq,
            members: g.members.len(),
        });
    }

    /// The members but this node: where a file for the group goes (once to each).
    pub fn others(&self, id: &GroupId) -> Result<Vec<PeerId>, Error> {
        Ok(self.others_and_head(id)?.0)
    }

    /// The other members, and the head, when this node is a member.
    fn others_and_head(&self, id: &GroupId) -> Result<(Vec<PeerId>, Head), Error> {
        let me = self.me();
        let logs = self.lock();
        let log = logs.get(id).ok_or(Error::NoSuchGroup(*id))?;
        if !log.members().contains(&me) {
            return Err(Error::NotMember(*id));
        }
        let others = log.members().iter().copied().filter(|p| *p != me);
        Ok((others.collect(), log.head()))
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
    /// The same entries to each of `to` (one transaction per message body).
    fn send_entries(
        &self,
        id: GroupId,
        head: Head,
        to: &[PeerId],
        entries: &[Entry],
    ) -> Result<(), Error> {
        if to.is_empty() {
            return Ok(());
        }
        let tag = Self::tag(id, group_kind::ENTRIES, 0, head);
        let mut bodies = vec![String::new()];
        for e in entries {
            let line = hex::encode(e.as_bytes());
            let body = bodies.last_mut().expect("one at least");
            if !body.is_empty() && body.len() + line.len() + 1 > MAX_ENTRIES_BODY {
                bodies.push(String::new());
            }
            let body = bodies.last_mut().expect("one at least");
            body.push_str(&line);
            body.push('\n');
        }
        for body in bodies.into_iter().filter(|b| !b.is_empty()) {
            self.outbox
                .enqueue_all(to, body, Via::default(), Some(tag))?;
        }
        for p in to {
            let _ = self.wake.try_send(*p);
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
        let (others, head) = self.others_and_head(&id)?;
        let seq = self.stored.next_seq(&id.0)?;
        let tag = Self::tag(id, group_kind::MESSAGE, seq, head);
        let sent = self
            .outbox
            .enqueue_all(&others, body, Via::default(), Some(tag))?;
        for p in &others {
            let _ = self.wake.try_send(*p);
        }
        // One flush of the database covers the log, the number and the copies.
        self.outbox.flush().await?;
        Ok((seq, sent))
    }

    /// What becomes of a group message from `from`: kept when it is a member in our log; refused
    /// when it is not and our heads agree; left for later (the sender retries) when our log may be
    /// behind — an unknown group, or heads that differ — after asking the sender to sync.
    pub fn judge_message(&self, from: &PeerId, tag: &GroupTag) -> Verdict {
        let id = GroupId(tag.group);
        let (member, differs) = match self.lock().get(&id) {
            Some(log) => (
                log.members().contains(from),
                log.head().digest != tag.head_digest,
            ),
            None => (false, true),
        };
        if differs {
            self.ask_sync(id, *from, tag.head_digest);
        }
        match (member, differs) {
            (true, _) => Verdict::Keep,
            (false, true) => Verdict::Later,
            (false, false) => Verdict::Refuse,
        }
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
        let (taken, head, before, after, linear) = {
            let mut logs = self.lock();
            if !logs.contains_key(&id) {
                // A group we are not in: only a log that adds us makes us hold it. A whole log
                // comes in several messages, and the one with our `add` may not be the first: the
                // others wait (bounded) until it comes.
                let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let adds_me = entries.iter().any(|e| e.op == Op::Add(me));
                if !adds_me || logs.len() >= MAX_GROUPS {
                    if waiting.len() < MAX_WAITING_GROUPS || waiting.contains_key(&id) {
                        let held = waiting.entry(id).or_default();
                        let room = crate::groups::log::MAX_LOG_ENTRIES.saturating_sub(held.len());
                        held.extend(entries.into_iter().take(room));
                    }
                    return Ok(());
                }
                let mut held = waiting.remove(&id).unwrap_or_default();
                held.extend(entries);
                entries = held;
                logs.insert(id, Log::new(id));
            }
            let log = logs.get_mut(&id).expect("inserted above");
            let before = log.state();
            let last_before = log.next().1;
            let (taken, refused) = admit_all(log, entries);
            // Entries that extend our log one after another were signed by someone who held
            // exactly our log: a member they added got it whole from them.
            let mut linear = true;
            let mut prev = last_before;
            for e in &taken {
                linear &= e.prev == prev;
                prev = e.hash;
            }
            for r in refused {
                tracing::info!(group = %id, %from, error = %r, "group entry refused");
            }
            (taken, log.head(), before, log.state(), linear)
        };
        for e in &taken {
            self.stored.put(&id.0, &e.hash, e.as_bytes())?;
        }
        if !taken.is_empty() {
            self.outbox.flush().await?;
        }
        if !taken.is_empty()
            && let Ok(info) = self.get(&id)
        {
            self.changed(&info);
        }
        if head.digest != tag.head_digest {
            self.ask_sync(id, from, tag.head_digest);
        }
        // Members someone else added may lack what we hold, unless the adder held what we hold:
        // show them our head.
        let added = (after.members.difference(&before.members)).filter(|p| **p != me && !linear);
        for added in added {
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
        // Without the log (a group we were added to whose log has not reached us): no hashes.
        let (hashes, head) = self.lock().get(&id).map_or_else(
            || (String::new(), Log::new(id).head()),
            |log| {
                let hashes: String = log.entries().map(|e| hex::encode(e.hash)).collect();
                (hashes, log.head())
            },
        );
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
            self.send_entries(id, head, &[from], &missing)?;
        }
        if they_have_more {
            self.ask_sync(id, from, tag.head_digest);
        }
        Ok(())
    }
}
