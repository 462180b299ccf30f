//! Lookups and dials clients are waiting for: at most [`MAX_PENDING_FINDS`] and
//! [`MAX_PENDING_DIALS`] at once (more get [`Error::Busy`]); each answered once, when its query or
//! connection ends.

use std::{collections::HashMap, time::Instant};

use libp2p::{PeerId, kad, swarm::ConnectionId};
use tokio::sync::oneshot;

use super::{MAX_PENDING_DIALS, MAX_PENDING_FINDS};
use crate::node::{Connected, Error, FoundPeer};

pub(super) struct PendingFind {
    pub(super) target: PeerId,
    pub(super) started: Instant,
    pub(super) reply: oneshot::Sender<Result<FoundPeer, Error>>,
}

pub(super) struct PendingDial {
    pub(super) peer: PeerId,
    pub(super) reply: oneshot::Sender<Result<Connected, Error>>,
}

/// The pending lookups (by Kademlia query) and dials (by connection).
#[derive(Default)]
pub(super) struct Queries {
    finds: HashMap<kad::QueryId, PendingFind>,
    dials: HashMap<ConnectionId, PendingDial>,
}

impl Queries {
    /// Whether another lookup may start; if not, `reply` is answered `Busy`.
    pub(super) fn room_for_find(
        &self,
        reply: oneshot::Sender<Result<FoundPeer, Error>>,
    ) -> Option<oneshot::Sender<Result<FoundPeer, Error>>> {
        if self.finds.len() >= MAX_PENDING_FINDS {
            let _ = reply.send(Err(Error::Busy("DHT lookups", MAX_PENDING_FINDS)));
            return None;
        }
        Some(reply)
    }

    pub(super) fn add_find(&mut self, id: kad::QueryId, find: PendingFind) {
        self.finds.insert(id, find);
    }

    /// The lookup query `id` belonged to, once.
    pub(super) fn take_find(&mut self, id: &kad::QueryId) -> Option<PendingFind> {
        self.finds.remove(id)
    }

    /// Whether another dial may start; if not, `reply` is answered `Busy`.
    pub(super) fn room_for_dial(
        &self,
        reply: oneshot::Sender<Result<Connected, Error>>,
    ) -> Option<oneshot::Sender<Result<Connected, Error>>> {
        if self.dials.len() >= MAX_PENDING_DIALS {
            let _ = reply.send(Err(Error::Busy("dials", MAX_PENDING_DIALS)));
            return None;
        }
        Some(reply)
    }

    pub(super) fn add_dial(&mut self, id: ConnectionId, dial: PendingDial) {
        self.dials.insert(id, dial);
    }

    /// The dial connection `id` belonged to, once.
    pub(super) fn take_dial(&mut self, id: &ConnectionId) -> Option<PendingDial> {
        self.dials.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_beyond_the_bound_are_answered_busy_and_each_dial_is_answered_once() {
        let mut q = Queries::default();
        for i in 0..MAX_PENDING_DIALS {
            let (tx, _rx) = oneshot::channel();
            let reply = q.room_for_dial(tx).expect("room");
            q.add_dial(
                ConnectionId::new_unchecked(i),
                PendingDial {
                    peer: PeerId::random(),
                    reply,
                },
            );
        }
        let (tx, mut rx) = oneshot::channel();
        assert!(q.room_for_dial(tx).is_none());
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(Error::Busy("dials", MAX_PENDING_DIALS)))
        ));
        let id = ConnectionId::new_unchecked(3);
        assert!(q.take_dial(&id).is_some());
        assert!(q.take_dial(&id).is_none(), "answered once");
        let (tx, _rx) = oneshot::channel();
        assert!(
            q.room_for_dial(tx).is_some(),
            "a finished dial frees its place"
        );
    }
}
