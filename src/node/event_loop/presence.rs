//! Signed presence records in the event loop (`protocols/dht-records-v1.md`): publishing ours,
//! validating inbound PUT_VALUEs before they are stored, and presence lookups that believe only
//! valid records. Signing and signature checks run on the blocking pool; their results come back
//! as [`Internal`] messages.

use std::time::Duration;

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
};

/// Signature checks of inbound records in flight at once; more are dropped (`overload`).
pub const MAX_PENDING_VALIDATIONS: usize = 64;
/// Records collected per lookup.
pub const MAX_LOOKUP_RECORDS: usize = 20;
/// Soonest republication after an address change.
pub const MIN_REPUBLISH_INTERVAL: Duration = Duration::from_secs(5);
/// First publication after start (bootstrap gets a moment).
pub const FIRST_PUBLISH_DELAY: Duration = Duration::from_secs(2);
/// Key of the last presence sequence number in the `meta` tree.
pub const SEQ_KEY: &[u8] = b"presence_seq";

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
            "Other nodes' presence records accepted into this node's DHT store",
            m.stored.clone(),
        );
        m
    }
}

pub(super) struct Lookup {
    pub(super) reply: oneshot::Sender<Result<Option<Presence>, Error>>,
    pub(super) records: Vec<Record>,
}

impl EventLoop {
    pub(super) fn reject(&self, reason: Reject, key: &[u8]) {
        self.presence_metrics
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
        match self.keys.rotate_if_due() {
            Ok(true) => {
                tracing::info!(
                    bundle = %hex::encode(self.keys.bundle.current().bundle().id()),
                    "key bundle rotated"
                );
                self.presence_dirty();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rotate the key bundle"),
        }
        self.next_rotation =
            rotation_deadline(&self.keys).max(tokio::time::Instant::now() + MIN_REPUBLISH_INTERVAL);
    }

    /// Addresses changed: publish again soon.
    pub(super) fn presence_dirty(&mut self) {
        let soon = tokio::time::Instant::now() + MIN_REPUBLISH_INTERVAL;
        self.next_publish = self.next_publish.min(soon);
    }

    /// Timer: sign a new record (off the loop) if we can reach the DHT.
    pub(super) fn publish_presence(&mut self) {
        let now = tokio::time::Instant::now();
        if self.publishing {
            self.next_publish = now + MIN_REPUBLISH_INTERVAL;
            return;
        }
        let table: usize = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        if table == 0 {
            self.next_publish = now + MIN_REPUBLISH_INTERVAL;
            return;
        }
        let last = self
            .meta
            .get(SEQ_KEY)
            .ok()
            .flatten()
            .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
            .unwrap_or(0);
        let seq = (last + 1).max(crate::time::unix_ms());
        if let Err(e) = self.meta.insert(SEQ_KEY, &seq.to_be_bytes()) {
            tracing::warn!(error = %e, "cannot store the presence sequence number");
            self.next_publish = now + MIN_REPUBLISH_INTERVAL;
            return;
        }
        let expires_at = crate::time::unix_secs() + self.presence_ttl.as_secs();
        let addrs = self.presence_addrs();
        let keys = self.keys.clone();
        let ttl = self.presence_ttl;
        let tx = self.internal_tx.clone();
        self.publishing = true;
        self.next_publish = now + self.republish_interval;
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
            rec.expires = Some(std::time::Instant::now() + ttl);
            let _ = tx.blocking_send(Internal::Signed { record: rec, seq });
        });
    }

    pub(super) fn on_signed(&mut self, record: Record, seq: u64) {
        self.publishing = false;
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

    /// An inbound PUT_VALUE: check it off the loop, store it when it comes back valid.
    pub(super) fn validate_inbound(&mut self, record: Record) {
        if self.validations >= MAX_PENDING_VALIDATIONS {
            self.reject(Reject::Overload, record.key.as_ref());
            return;
        }
        self.validations += 1;
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::time::unix_secs();
            let result = record::verify(record.key.as_ref(), &record.value, now)
                .map(|p| (p.seq, p.expires_at));
            let _ = tx.blocking_send(Internal::Validated { record, result });
        });
    }

    pub(super) fn on_validated(&mut self, mut record: Record, result: Result<(u64, u64), Reject>) {
        self.validations -= 1;
        let (seq, expires_at) = match result {
            Ok(v) => v,
            Err(reason) => return self.reject(reason, record.key.as_ref()),
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        let current = kad.store_mut().get(&record.key).map(|r| r.value.clone());
        match record::replaces(current.as_deref(), &record.value, seq) {
            Ok(true) => {
                let left = expires_at.saturating_sub(crate::time::unix_secs());
                record.expires = Some(std::time::Instant::now() + Duration::from_secs(left));
                if let Err(e) = kad.store_mut().put(record) {
                    tracing::debug!(error = ?e, "DHT store refused a valid record");
                } else {
                    self.presence_metrics.stored.inc();
                }
            }
            Ok(false) => {}
            Err(reason) => self.reject(reason, record.key.as_ref()),
        }
    }

    pub(super) fn lookup_presence(
        &mut self,
        peer: PeerId,
        reply: oneshot::Sender<Result<Option<Presence>, Error>>,
    ) {
        if self.lookups.len() >= MAX_PENDING_FINDS {
            let _ = reply.send(Err(Error::Busy("presence lookups", MAX_PENDING_FINDS)));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(record::key(&peer));
        self.lookups.insert(
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
        let Some(lookup) = self.lookups.get_mut(&id) else {
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
        let Some(lookup) = self.lookups.remove(&id) else {
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
