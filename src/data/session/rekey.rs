//! Key updates of version 2 sessions (`protocols/data-v2.md` §5): after `data.rekey_bytes` sent or
//! `data.rekey_secs`, the initiator sends KEY_UPDATE with a fresh ML-KEM-768 key; the responder
//! answers KEY_REPLY with a ciphertext to it and sends under the new keys from then on; the
//! initiator switches its receiving key at once, sends KEY_DONE and sends under the new keys after
//! it; the responder switches its receiving key at KEY_DONE. Both halves of a session share this
//! state: the reader meets the peer's frames, the writer seals ours.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{Error, ErrorCode, Inner};
use crate::crypto::{
    Role, SessionKeys,
    bundle::{self, EphemeralKem},
    handshake::v2,
};

/// When the initiator of a version 2 session updates its keys (`data.rekey_bytes`,
/// `data.rekey_secs`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Plaintext bytes sealed by the initiator under one key.
    pub bytes: u64,
    /// Longest time under one key (checked when the initiator next sends).
    pub interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            bytes: 1 << 30,
            interval: Duration::from_secs(3600),
        }
    }
}

pub(super) type Shared = Arc<Mutex<KeyState>>;

/// One session's keys and where their update stands.
pub(super) struct KeyState {
    role: Role,
    keys: SessionKeys,
    policy: Policy,
    /// Initiator: plaintext sealed since the last update started, and when it started.
    sealed: u64,
    since: Instant,
    /// Initiator: the key pair of a KEY_UPDATE sent and not answered yet.
    pending: Option<EphemeralKem>,
    /// A frame our writer seals under the current key before switching to the key given.
    marker: Option<(Inner, [u8; 32])>,
    /// Responder: the receiving key to take at KEY_DONE.
    next_recv: Option<[u8; 32]>,
    /// Updates finished (initiator: KEY_REPLY taken; responder: KEY_DONE taken), here and in the
    /// node's counter.
    updates: u64,
    counter: Counter,
}

fn unexpected(detail: &str) -> Error {
    Error::protocol(ErrorCode::UNEXPECTED_FRAME, detail)
}

impl KeyState {
    pub(super) fn shared(
        role: Role,
        keys: SessionKeys,
        policy: Policy,
        counter: Counter,
    ) -> Shared {
        Arc::new(Mutex::new(Self {
            role,
            keys,
            policy,
            sealed: 0,
            since: Instant::now(),
            pending: None,
            marker: None,
            next_recv: None,
            updates: 0,
            counter,
        }))
    }

    pub(super) fn updates(&self) -> u64 {
        self.updates
    }

    /// Writer: a marker to seal under the current key, and the sending key after it.
    pub(super) fn take_marker(&mut self) -> Option<(Inner, [u8; 32])> {
        self.marker.take()
    }

    /// Writer (initiator), before sealing `len` more bytes: a KEY_UPDATE to seal first when one
    /// is due.
    pub(super) fn update_due(&mut self, len: usize) -> Option<Inner> {
        self.sealed = self.sealed.saturating_add(len as u64);
        let due = self.sealed >= self.policy.bytes || self.since.elapsed() >= self.policy.interval;
        if self.role != Role::Initiator || self.pending.is_some() || !due {
            return None;
        }
        let kem = EphemeralKem::generate(None);
        let ek = kem.public().into();
        self.pending = Some(kem);
        self.sealed = 0;
        self.since = Instant::now();
        Some(Inner::KeyUpdate { ek })
    }

    /// Reader (responder): the peer's KEY_UPDATE. Derives the new keys; our writer sends
    /// KEY_REPLY under the old key and switches after it.
    pub(super) fn on_update(&mut self, ek: &[u8]) -> Result<(), Error> {
        if self.role != Role::Responder {
            return Err(unexpected("KEY_UPDATE from the responder"));
        }
        if self.next_recv.is_some() {
            return Err(unexpected("KEY_UPDATE before KEY_DONE of the last one"));
        }
        let (ct, ss) = bundle::encapsulate_to(ek, None)
            .map_err(|_| Error::protocol(ErrorCode::BAD_KEM_CIPHERTEXT, "KEY_UPDATE key"))?;
        self.keys = v2::next_keys(&self.keys, &ss);
        self.marker = Some((
            Inner::KeyReply { ct: ct.into() },
            self.keys.responder_to_initiator,
        ));
        self.next_recv = Some(self.keys.initiator_to_responder);
        Ok(())
    }

    /// Reader (initiator): the peer's KEY_REPLY. Returns the new receiving key (the responder
    /// sends under it from the next frame on); our writer sends KEY_DONE and switches after it.
    pub(super) fn on_reply(&mut self, ct: &[u8]) -> Result<[u8; 32], Error> {
        if self.role != Role::Initiator {
            return Err(unexpected("KEY_REPLY from the initiator"));
        }
        let kem = self
            .pending
            .take()
            .ok_or_else(|| unexpected("KEY_REPLY without a KEY_UPDATE"))?;
        let ss = kem.decapsulate(ct)?;
        self.keys = v2::next_keys(&self.keys, &ss);
        self.marker = Some((Inner::KeyDone, self.keys.initiator_to_responder));
        self.updates += 1;
        self.counter.inc();
        Ok(self.keys.responder_to_initiator)
    }

    /// Reader (responder): the peer's KEY_DONE. Returns the new receiving key.
    pub(super) fn on_done(&mut self) -> Result<[u8; 32], Error> {
        if self.role != Role::Responder {
            return Err(unexpected("KEY_DONE from the responder"));
        }
        let key = self
            .next_recv
            .take()
            .ok_or_else(|| unexpected("KEY_DONE without a KEY_UPDATE"))?;
        self.updates += 1;
        self.counter.inc();
        Ok(key)
    }
}
