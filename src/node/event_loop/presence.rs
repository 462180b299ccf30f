//! Signed presence records in the event loop (`protocols/dht-records-v1.md`): publishing ours,
//! validating inbound PUT_VALUEs before they are stored, and presence lookups that believe only
//! valid records. Signing and signature checks run on the blocking pool; their results come back
//! as [`Internal`] messages.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    kad::{self, Quorum, Record, store::RecordStore as _},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::sync::oneshot;

use super::{EventLoop, Internal, MAX_PENDING_FINDS};
use crate::{
    crypto::LocalKeys,
    dht::record::{self, Presence, Reject},
    nat::{self, Scope},
    node::Error,
    store::PresenceSeq,
};

/// Signature checks of inbound records in flight at once; more are dropped (`overload`).
pub const MAX_PENDING_VALIDATIONS: usize = 64;
/// Records collected per lookup.
pub const MAX_LOOKUP_RECORDS: usize = 20;
/// Soonest republication after an address change.
pub const MIN_REPUBLISH_INTERVAL: Duration = Duration::from_secs(5);
/// First publication after start (bootstrap gets a moment).
pub const FIRST_PUBLISH_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: &'static str,
}

/// Metrics of record handling.
#[derive(Clone, Default)]
pub struct Metrics {
    pub rejected: Family<RejectLabels, Counter>,
    pub stored: Counter,
}

impl Metrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "dht_records_rejected",
            "DHT records refused by validation, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "dht_records_stored",
            "Other nodes' records (presence, names) accepted into this node's DHT store",
            m.stored.clone(),
        );
        m
    }
}

/// What becomes of an inbound record ([`State::arrived`]).
pub(super) enum Arrival {
    Check(Record),
    Waits,
    /// Dropped: the key it was for.
    Full(kad::RecordKey),
}

pub(super) struct Lookup {
    pub(super) reply: oneshot::Sender<Result<Option<Presence>, Error>>,
    pub(super) records: Vec<Record>,
}

/// Presence publishing and record checks: when our record is published next (and whether a
/// signature is in flight), the key-rotation deadline, signature checks of inbound records in
/// flight, and the pending lookups.
pub(super) struct State {
    pub(super) keys: Arc<LocalKeys>,
    /// The last sequence number published.
    seq: PresenceSeq,
    pub(super) ttl: Duration,
    republish_interval: Duration,
    pub(super) next_publish: tokio::time::Instant,
    /// When the key bundle is due to be replaced (`data.key_rotation_secs`).
    pub(super) next_rotation: tokio::time::Instant,
    /// A record is being signed.
    pub(super) publishing: bool,
    /// Publish again as soon as the record being signed is out ([`State::publish_now`]).
    again: bool,
    validations: usize,
    /// Keys with a record being checked, and the records that arrived for them meanwhile: checked
    /// one after the other in arrival order, so that "first come" (names) means first to arrive.
    waiting: HashMap<Vec<u8>, VecDeque<Record>>,
    pub(super) lookups: HashMap<kad::QueryId, Lookup>,
    pub(super) metrics: Metrics,
}

impl State {
    pub(super) fn new(
        cfg: &crate::node::config::Presence,
        keys: Arc<LocalKeys>,
        seq: PresenceSeq,
        metrics: Metrics,
        now: tokio::time::Instant,
    ) -> Self {
        Self {
            next_rotation: rotation_deadline(&keys),
            keys,
            seq,
            ttl: Duration::from_secs(cfg.ttl_secs),
            republish_interval: Duration::from_secs(cfg.republish_secs),
            next_publish: now + FIRST_PUBLISH_DELAY,
            publishing: false,
            again: false,
            validations: 0,
            waiting: HashMap::new(),
            lookups: HashMap::new(),
            metrics,
        }
    }

    /// Addresses changed: publish again within [`MIN_REPUBLISH_INTERVAL`].
    pub(super) fn dirty(&mut self, now: tokio::time::Instant) {
        self.next_publish = self.next_publish.min(now + MIN_REPUBLISH_INTERVAL);
    }

    /// The first address peers can reach us at (a relay reservation): publish at once, or right
    /// after a publication in flight.
    pub(super) fn publish_now(&mut self, now: tokio::time::Instant) {
        self.next_publish = now;
        self.again = self.publishing;
    }

    /// At the publication deadline, with `routing_table` peers known: the sequence number of the
    /// record to sign now (stored first, so a restart never reuses one), or `None` to try again
    /// in [`MIN_REPUBLISH_INTERVAL`] (a signature in flight, nobody to publish to, the store
    /// failing).
    pub(super) fn begin_publish(
        &mut self,
        now: tokio::time::Instant,
        routing_table: usize,
    ) -> Option<u64> {
        if self.publishing || routing_table == 0 {
            self.next_publish = now + MIN_REPUBLISH_INTERVAL;
            return None;
        }
        let seq = match self.seq.next() {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the presence sequence number");
                self.next_publish = now + MIN_REPUBLISH_INTERVAL;
                return None;
            }
        };
        self.publishing = true;
        self.next_publish = now + self.republish_interval;
        Some(seq)
    }

    /// An inbound record arrived: to check now, to wait behind an earlier one under its key, or
    /// too many ([`MAX_PENDING_VALIDATIONS`] in flight or waiting).
    pub(super) fn arrived(&mut self, record: Record) -> Arrival {
        if !self.take_validation_slot() {
            return Arrival::Full(record.key);
        }
        match self.waiting.entry(record.key.to_vec()) {
            Entry::Occupied(mut e) => {
                e.get_mut().push_back(record);
                Arrival::Waits
            }
            Entry::Vacant(e) => {
                e.insert(VecDeque::new());
                Arrival::Check(record)
            }
        }
    }

    /// The check of a record under `key` ended: the next one that waits for that key, if any.
    pub(super) fn checked(&mut self, key: &[u8]) -> Option<Record> {
        self.validation_done();
        let next = self.waiting.get_mut(key)?.pop_front();
        if next.is_none() {
            self.waiting.remove(key);
        }
        next
    }

    /// Takes a place for a signature check of an inbound record; false when
    /// [`MAX_PENDING_VALIDATIONS`] are in flight.
    pub(super) fn take_validation_slot(&mut self) -> bool {
        if self.validations >= MAX_PENDING_VALIDATIONS {
            return false;
        }
        self.validations += 1;
        true
    }

    /// A signature check ended, whatever its verdict.
    pub(super) fn validation_done(&mut self) {
        self.validations = self.validations.saturating_sub(1);
    }
}

impl EventLoop {
    pub(super) fn reject(&self, reason: Reject, key: &[u8]) {
        self.presence
            .metrics
            .rejected
            .get_or_create(&RejectLabels {
                reason: reason.as_str(),
            })
            .inc();
        tracing::debug!(reason = reason.as_str(), key = %String::from_utf8_lossy(key), "DHT record rejected");
    }

    /// Our addresses for the record: confirmed external ones first, then listen addresses;
    /// loopback ones only when there is nothing else.
    fn presence_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        for a in self.swarm.listeners() {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        if addrs
            .iter()
            .any(|a| nat::scope(a).is_some_and(|s| s > Scope::Loopback))
        {
            addrs.retain(|a| nat::scope(a) != Some(Scope::Loopback));
        }
        addrs.truncate(record::MAX_RECORD_ADDRS);
        addrs
    }

    /// Timer: replace the key bundle if it is due, and publish the new one in a fresh record.
    pub(super) fn rotate_keys(&mut self) {
        match self.presence.keys.rotate_if_due() {
            Ok(true) => {
                tracing::info!(
                    bundle = %hex::encode(self.presence.keys.bundle.current().bundle().id()),
                    "key bundle rotated"
                );
                self.presence_dirty();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rotate the key bundle"),
        }
        self.presence.next_rotation = rotation_deadline(&self.presence.keys)
            .max(tokio::time::Instant::now() + MIN_REPUBLISH_INTERVAL);
    }

    /// Addresses changed: publish again soon.
    pub(super) fn presence_dirty(&mut self) {
        self.presence.dirty(tokio::time::Instant::now());
    }

    /// Timer: sign a new record (off the loop) if we can reach the DHT.
    pub(super) fn publish_presence(&mut self) {
        let now = tokio::time::Instant::now();
        let table = self.routing_table_size();
        let Some(seq) = self.presence.begin_publish(now, table) else {
            return;
        };
        let expires_at = crate::time::unix_secs() + self.presence.ttl.as_secs();
        let addrs = self.presence_addrs();
        let keys = self.presence.keys.clone();
        let ttl = self.presence.ttl;
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let value = record::sign(
                &keys.identity,
                &keys.bundle.current(),
                seq,
                expires_at,
                &addrs,
            );
            let mut rec = Record::new(record::key(&keys.peer_id()), value);
            rec.publisher = Some(keys.peer_id());
            rec.expires = Some(web_time::Instant::now() + ttl);
            let _ = tx.blocking_send(Internal::Signed { record: rec, seq });
        });
    }

    pub(super) fn on_signed(&mut self, record: Record, seq: u64) {
        self.presence.publishing = false;
        if std::mem::take(&mut self.presence.again) {
            self.presence.next_publish = tokio::time::Instant::now();
        }
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
        {
            Ok(_) => tracing::debug!(seq, "publishing presence record"),
            Err(e) => tracing::warn!(error = ?e, "cannot store our presence record"),
        }
    }

    /// An inbound PUT_VALUE: checked off the loop against the record stored under its key, after
    /// the records that arrived earlier for the same key ([`State::arrived`]).
    pub(super) fn validate_inbound(&mut self, record: Record) {
        match self.presence.arrived(record) {
            Arrival::Check(record) => self.check_inbound(record),
            Arrival::Waits => {}
            Arrival::Full(key) => self.reject(Reject::Overload, key.as_ref()),
        }
    }

    /// Judges `record` against what is stored under its key now ([`crate::dht::admit`]).
    fn check_inbound(&mut self, record: Record) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let held = kad.store_mut().get(&record.key).map(|r| r.value.clone());
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::time::unix_secs();
            let result =
                crate::dht::admit(record.key.as_ref(), &record.value, held.as_deref(), now);
            let _ = tx.blocking_send(Internal::Validated {
                record,
                held,
                result,
            });
        });
    }

    pub(super) fn on_validated(
        &mut self,
        mut record: Record,
        held: Option<Vec<u8>>,
        result: Result<Option<u64>, Reject>,
    ) {
        let key = record.key.to_vec();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let changed = match (kad.store_mut().get(&record.key), &held) {
            (Some(now), Some(then)) => now.value != *then,
            (now, then) => now.is_some() != then.is_some(),
        };
        if changed {
            // This node stored a record of its own under the key meanwhile: judged again against
            // what is there now (it keeps its place).
            return self.check_inbound(record);
        }
        match result {
            Ok(Some(expires_at)) => {
                let left = expires_at.saturating_sub(crate::time::unix_secs());
                record.expires = Some(web_time::Instant::now() + Duration::from_secs(left));
                if let Err(e) = kad.store_mut().put(record) {
                    tracing::debug!(error = ?e, "DHT store refused a valid record");
                } else {
                    self.presence.metrics.stored.inc();
                }
            }
            Ok(None) => {}
            Err(reason) => self.reject(reason, &key),
        }
        if let Some(next) = self.presence.checked(&key) {
            self.check_inbound(next);
        }
    }

    pub(super) fn lookup_presence(
        &mut self,
        peer: PeerId,
        reply: oneshot::Sender<Result<Option<Presence>, Error>>,
    ) {
        if self.presence.lookups.len() >= MAX_PENDING_FINDS {
            let _ = reply.send(Err(Error::Busy("presence lookups", MAX_PENDING_FINDS)));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(record::key(&peer));
        self.presence.lookups.insert(
            id,
            Lookup {
                reply,
                records: Vec::new(),
            },
        );
    }

    pub(super) fn on_get_record(
        &mut self,
        id: kad::QueryId,
        result: kad::GetRecordResult,
        last: bool,
    ) {
        let Some(lookup) = self.presence.lookups.get_mut(&id) else {
            return;
        };
        if let Ok(kad::GetRecordOk::FoundRecord(found)) = result
            && lookup.records.len() < MAX_LOOKUP_RECORDS
        {
            lookup.records.push(found.record);
        }
        if !last {
            return;
        }
        let Some(lookup) = self.presence.lookups.remove(&id) else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::time::unix_secs();
            let mut best: Option<Presence> = None;
            let mut rejected = Vec::new();
            for r in &lookup.records {
                match record::verify(r.key.as_ref(), &r.value, now) {
                    Ok(p) if best.as_ref().is_none_or(|b| p.seq > b.seq) => best = Some(p),
                    Ok(_) => {}
                    Err(reason) => rejected.push((reason, r.key.to_vec())),
                }
            }
            let _ = tx.blocking_send(Internal::LookupDone {
                reply: lookup.reply,
                best: best.map(Box::new),
                rejected,
            });
        });
    }
}

/// When the current bundle of `keys` is due to be replaced, as a timer deadline (far in the future
/// when it never rotates).
pub(super) fn rotation_deadline(keys: &LocalKeys) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match keys.bundle.next_rotation() {
        Some(at) => now + Duration::from_secs(at.saturating_sub(crate::time::unix_secs())),
        None => now + Duration::from_secs(365 * 24 * 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, crate::store::Store) {
        let store = crate::store::Store::temporary().unwrap();
        let s = State::new(
            &crate::node::config::Presence::default(),
            Arc::new(LocalKeys::generate()),
            store.presence_seq().unwrap(),
            Metrics::default(),
            tokio::time::Instant::now(),
        );
        (s, store)
    }

    #[test]
    fn a_record_is_signed_only_with_peers_to_publish_to_and_one_at_a_time() {
        let (mut s, _store) = state();
        let now = tokio::time::Instant::now();
        assert_eq!(s.begin_publish(now, 0), None, "an empty routing table");
        assert_eq!(s.next_publish, now + MIN_REPUBLISH_INTERVAL);
        let first = s.begin_publish(now, 3).expect("peers to publish to");
        assert_eq!(s.next_publish, now + Duration::from_secs(1200));
        assert_eq!(s.begin_publish(now, 3), None, "a signature is in flight");
        s.publishing = false;
        let second = s.begin_publish(now, 3).unwrap();
        assert!(second > first, "{second} after {first}");
        assert_eq!(s.seq.last().unwrap(), second, "stored before signing");
    }

    #[test]
    fn records_for_one_key_are_checked_in_arrival_order_and_bounded() {
        let (mut s, _store) = state();
        let rec = |key: &[u8], n: u8| Record::new(key.to_vec(), vec![n]);
        let checked_now = |a: Arrival| match a {
            Arrival::Check(r) => r.value,
            _ => panic!("not checked at once"),
        };
        assert_eq!(checked_now(s.arrived(rec(b"k", 1))), [1]);
        assert!(
            matches!(s.arrived(rec(b"k", 2)), Arrival::Waits),
            "waits behind 1"
        );
        assert!(
            matches!(s.arrived(rec(b"k", 3)), Arrival::Waits),
            "waits behind 2"
        );
        assert_eq!(checked_now(s.arrived(rec(b"j", 9))), [9], "another key");
        assert_eq!(s.checked(b"k").unwrap().value, [2]);
        assert_eq!(s.checked(b"k").unwrap().value, [3]);
        assert!(s.checked(b"k").is_none());
        assert!(s.checked(b"j").is_none());
        assert_eq!(s.validations, 0, "every place given back");
        for i in 0..MAX_PENDING_VALIDATIONS {
            assert!(!matches!(s.arrived(rec(b"k", i as u8)), Arrival::Full(_)));
        }
        assert!(
            matches!(s.arrived(rec(b"x", 0)), Arrival::Full(_)),
            "over the bound"
        );
    }

    #[test]
    fn address_changes_bring_the_next_publication_forward_only() {
        let (mut s, _store) = state();
        let now = tokio::time::Instant::now();
        s.next_publish = now + Duration::from_secs(600);
        s.dirty(now);
        assert_eq!(s.next_publish, now + MIN_REPUBLISH_INTERVAL);
        s.next_publish = now + Duration::from_secs(1);
        s.dirty(now);
        assert_eq!(s.next_publish, now + Duration::from_secs(1));
    }

    #[test]
    fn signature_checks_in_flight_are_bounded() {
        let (mut s, _store) = state();
        for _ in 0..MAX_PENDING_VALIDATIONS {
            assert!(s.take_validation_slot());
        }
        assert!(!s.take_validation_slot());
        s.validation_done();
        assert!(s.take_validation_slot());
    }
}
