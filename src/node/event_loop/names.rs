//! Names (`protocols/names-v1.md`): the handle this node claimed, published and republished with a
//! fresh sequence number while the node runs (kept in the store across restarts), its release,
//! and lookups of names with a cache that lasts as long as the record it holds.

use std::{collections::HashMap, time::Duration};

use libp2p::kad::{self, Quorum, Record};
use tokio::{sync::oneshot, time::Instant};

use super::{EventLoop, Internal, MAX_PENDING_FINDS};
use crate::{
    dht::name::{self, Name},
    names::Handle,
    node::{Error, ResolvedName},
    store::NameClaim,
};

/// Lifetime of a released record: long enough for every node to replace the claim with it.
pub const RELEASED_TTL_SECS: u64 = 3600;
/// Resolved names remembered at most; the soonest to expire go first.
pub const MAX_CACHED_NAMES: usize = 1024;
/// Records collected per name lookup.
pub const MAX_LOOKUP_RECORDS: usize = 20;
/// Records after which a lookup stops asking (nodes that went away would otherwise hold it until
/// their requests time out): enough to see a conflict between holders in most cases.
pub const LOOKUP_QUORUM: usize = 3;

pub(super) type Reply = oneshot::Sender<Result<Option<ResolvedName>, Error>>;

pub(super) struct Lookup {
    handle: Handle,
    reply: Reply,
    records: Vec<Record>,
}

/// The claimed handle and its timer, lookups in flight, the cache.
pub(super) struct State {
    claim: NameClaim,
    claimed: Option<Handle>,
    ttl: Duration,
    republish_interval: Duration,
    /// Far in the future while nothing is claimed.
    pub(super) next_publish: Instant,
    lookups: HashMap<kad::QueryId, Lookup>,
    /// Claims and releases waiting for their record to be stored (`Quorum::One`).
    puts: HashMap<kad::QueryId, oneshot::Sender<Result<(), Error>>>,
    cache: HashMap<Handle, ResolvedName>,
}

impl State {
    pub(super) fn new(cfg: &crate::node::config::Presence, claim: NameClaim, now: Instant) -> Self {
        // A damaged claim is dropped: the person claims again.
        let claimed = claim.handle().unwrap_or(None);
        Self {
            claim,
            next_publish: match claimed {
                Some(_) => now + super::presence::FIRST_PUBLISH_DELAY,
                None => far_future(now),
            },
            claimed,
            ttl: Duration::from_secs(cfg.ttl_secs.min(name::MAX_TTL_SECS)),
            republish_interval: Duration::from_secs(cfg.republish_secs),
            lookups: HashMap::new(),
            puts: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The handle this node claimed.
    pub(super) fn claimed(&self) -> Option<&Handle> {
        self.claimed.as_ref()
    }

    pub(super) fn owns_put(&self, id: &kad::QueryId) -> bool {
        self.puts.contains_key(id)
    }

    pub(super) fn owns(&self, id: &kad::QueryId) -> bool {
        self.lookups.contains_key(id)
    }

    /// A cached answer for `handle` still good at `now` (unix seconds).
    fn cached(&self, handle: &Handle, now: u64) -> Option<ResolvedName> {
        self.cache
            .get(handle)
            .filter(|r| r.expires_at > now)
            .cloned()
    }

    fn remember(&mut self, r: ResolvedName, now: u64) {
        self.cache.retain(|_, c| c.expires_at > now);
        if self.cache.len() >= MAX_CACHED_NAMES
            && let Some(soonest) = self
                .cache
                .iter()
                .min_by_key(|(_, c)| c.expires_at)
                .map(|(h, _)| h.clone())
        {
            self.cache.remove(&soonest);
        }
        self.cache.insert(r.handle.clone(), r);
    }
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

/// The answer the records of one lookup give (`names-v1.md` §6): the holder's newest record, none,
/// or a conflict between holders. The holder of a key holds every look-alike of its handle: the
/// answer names the handle it claimed, which may differ from the one looked up.
fn resolve(handle: &Handle, records: &[Record], now: u64) -> Result<Option<ResolvedName>, Error> {
    let holders: Vec<Name> = records
        .iter()
        .filter_map(|r| name::verify(r.key.as_ref(), &r.value, now).ok())
        .filter(|n| n.holds(now))
        .collect();
    let mut owners: Vec<_> = holders.iter().map(|n| n.peer).collect();
    owners.sort();
    owners.dedup();
    if owners.len() > 1 {
        return Err(Error::NameConflict {
            handle: handle.clone(),
            owners,
        });
    }
    Ok(holders
        .into_iter()
        .max_by_key(|n| n.seq)
        .map(|n| ResolvedName {
            handle: n.handle,
            peer_id: n.peer,
            seq: n.seq,
            expires_at: n.expires_at,
            binding: n.binding,
        }))
}

impl EventLoop {
    /// Claims `handle` (or, with `None`, releases the claimed one): stored first, then signed
    /// off the loop and put in the DHT.
    pub(super) fn put_name(
        &mut self,
        handle: Option<Handle>,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        let now = Instant::now();
        let (target, released) = match (&handle, &self.names.claimed) {
            (Some(h), _) => (h.clone(), false),
            (None, Some(old)) => (old.clone(), true),
            (None, None) => {
                let _ = reply.send(Ok(()));
                return;
            }
        };
        if let Err(e) = self.names.claim.set(handle.as_ref()) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        self.names.claimed = handle;
        self.names.next_publish = match released {
            false => now + self.names.republish_interval,
            true => far_future(now),
        };
        self.names
            .cache
            .retain(|h, _| name::key(h) != name::key(&target));
        self.sign_name(target, released, Some(reply));
    }

    /// Timer: republish the claimed name.
    pub(super) fn republish_name(&mut self) {
        let now = Instant::now();
        match self.names.claimed.clone() {
            Some(h) if self.routing_table_size() > 0 => {
                self.names.next_publish = now + self.names.republish_interval;
                self.sign_name(h, false, None);
            }
            Some(_) => self.names.next_publish = now + super::presence::MIN_REPUBLISH_INTERVAL,
            None => self.names.next_publish = far_future(now),
        }
    }

    fn sign_name(
        &mut self,
        handle: Handle,
        released: bool,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        let seq = match self.names.claim.seq.next() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the name's sequence number");
                if let Some(r) = reply {
                    let _ = r.send(Err(e.into()));
                }
                return;
            }
        };
        let ttl = match released {
            true => RELEASED_TTL_SECS.min(self.names.ttl.as_secs()),
            false => self.names.ttl.as_secs(),
        };
        let keys = self.presence.keys.clone();
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let expires_at = crate::time::unix_secs() + ttl;
            let value = name::sign(&keys.identity, &handle, seq, expires_at, released);
            let mut record = Record::new(name::key(&handle), value);
            record.publisher = Some(keys.peer_id());
            record.expires = Some(web_time::Instant::now() + Duration::from_secs(ttl));
            let _ = tx.blocking_send(Internal::NameSigned { record, reply });
        });
    }

    pub(super) fn on_name_signed(
        &mut self,
        record: Record,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
        {
            // The claim answers once a peer stored the record (or none could).
            Ok(id) => {
                if let Some(r) = reply {
                    self.names.puts.insert(id, r);
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, "cannot publish the name record");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Dial(format!(
                        "cannot store the name record: {e:?}"
                    ))));
                }
            }
        }
    }

    /// The put of a claim or release ended. A claim no peer stored yet stands (it is kept and
    /// republished when there are peers): logged, not an error.
    pub(super) fn on_name_put(&mut self, id: kad::QueryId, result: kad::PutRecordResult) {
        if let Err(e) = &result {
            tracing::warn!(error = ?e, "no peer stored the name record yet; it is republished");
        }
        if let Some(reply) = self.names.puts.remove(&id) {
            let _ = reply.send(Ok(()));
        }
    }

    pub(super) fn resolve_name(&mut self, handle: Handle, fresh: bool, reply: Reply) {
        if let Some(hit) = self.names.cached(&handle, crate::time::unix_secs())
            && !fresh
        {
            let _ = reply.send(Ok(Some(hit)));
            return;
        }
        if self.names.lookups.len() >= MAX_PENDING_FINDS {
            let _ = reply.send(Err(Error::Busy("name lookups", MAX_PENDING_FINDS)));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(name::key(&handle));
        self.names.lookups.insert(
            id,
            Lookup {
                handle,
                reply,
                records: Vec::new(),
            },
        );
    }

    pub(super) fn on_name_record(
        &mut self,
        id: kad::QueryId,
        result: kad::GetRecordResult,
        last: bool,
    ) {
        let Some(lookup) = self.names.lookups.get_mut(&id) else {
            return;
        };
        if let Ok(kad::GetRecordOk::FoundRecord(found)) = result
            && lookup.records.len() < MAX_LOOKUP_RECORDS
        {
            lookup.records.push(found.record);
            if lookup.records.len() == LOOKUP_QUORUM
                && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id)
            {
                q.finish();
            }
        }
        if !last {
            return;
        }
        let Some(lookup) = self.names.lookups.remove(&id) else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = resolve(&lookup.handle, &lookup.records, crate::time::unix_secs());
            let _ = tx.blocking_send(Internal::NameResolved {
                reply: lookup.reply,
                result,
            });
        });
    }

    pub(super) fn on_name_resolved(
        &mut self,
        reply: Reply,
        result: Result<Option<ResolvedName>, Error>,
    ) {
        if let Ok(Some(r)) = &result {
            self.names.remember(r.clone(), crate::time::unix_secs());
        }
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn rec(id: &Identity, handle: &str, seq: u64, expires_at: u64, released: bool) -> Record {
        let h = Handle::parse(handle).unwrap();
        Record::new(name::key(&h), name::sign(id, &h, seq, expires_at, released))
    }

    #[test]
    fn a_lookup_answers_with_the_holder_none_or_the_conflict() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let alice = Handle::parse("alice").unwrap();
        let now = 1_000;
        let r = resolve(
            &alice,
            &[
                rec(&a, "alice", 1, 2000, false),
                rec(&a, "alice", 2, 2000, false),
            ],
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.peer_id, r.seq), (a.peer_id(), 2));
        assert!(resolve(&alice, &[], now).unwrap().is_none());
        // Released and expired records hold nothing.
        let gone = [
            rec(&a, "alice", 3, 2000, true),
            rec(&b, "alice", 1, 900, false),
        ];
        assert!(resolve(&alice, &gone, now).unwrap().is_none());
        // A look-alike's holder holds `alice` too, under its own spelling.
        let r = resolve(&alice, &[rec(&b, "a1ice", 1, 2000, false)], now)
            .unwrap()
            .unwrap();
        assert_eq!((r.peer_id, r.handle.as_str()), (b.peer_id(), "a1ice"));
        let both = [
            rec(&a, "alice", 1, 2000, false),
            rec(&b, "alice", 1, 2000, false),
        ];
        assert!(matches!(
            resolve(&alice, &both, now),
            Err(Error::NameConflict { owners, .. }) if owners.len() == 2
        ));
    }

    #[test]
    fn the_cache_forgets_expired_answers_and_stays_bounded() {
        let store = crate::store::Store::temporary().unwrap();
        let mut s = State::new(
            &crate::node::config::Presence::default(),
            store.name_claim().unwrap(),
            Instant::now(),
        );
        let holder = crate::identity::Identity::generate();
        let answer = |h: &str, expires_at| ResolvedName {
            handle: Handle::parse(h).unwrap(),
            peer_id: holder.peer_id(),
            seq: 1,
            expires_at,
            binding: holder.binding().clone(),
        };
        s.remember(answer("alice", 100), 10);
        let alice = Handle::parse("alice").unwrap();
        assert!(s.cached(&alice, 99).is_some());
        assert!(s.cached(&alice, 100).is_none());
        for i in 0..MAX_CACHED_NAMES + 10 {
            s.remember(answer(&format!("name-{i}"), 1000 + i as u64), 10);
        }
        assert_eq!(s.cache.len(), MAX_CACHED_NAMES);
        assert!(
            s.cached(&Handle::parse("name-0").unwrap(), 10).is_none(),
            "the soonest to expire went"
        );
    }
}
