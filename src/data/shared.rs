//! What the data service's tasks share: the store's trees, the node's client and streams, the
//! configuration, the event channel and the shutdown token. The service ([`super::service`]) builds
//! it; the session tasks ([`super::inbound`]) and delivery workers ([`super::delivery`]) read it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    crypto::LocalKeys,
    node,
    store::{Inbox, Outbox, Transfers, transfers},
};

/// What the data service reports (merged into `GET /v1/events`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    MessageReceived {
        id: String,
        from: PeerId,
        seq: u64,
        /// The group, for a group message.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<crate::groups::GroupId>,
    },
    /// A group's log changed here: a change signed here, or entries taken in from a member.
    GroupChanged {
        group: crate::groups::GroupId,
        head_seq: u64,
        members: usize,
    },
    MessagesDelivered {
        to: PeerId,
        count: usize,
        up_to_seq: u64,
    },
    DeliveryFailed {
        to: PeerId,
        error: String,
    },
    TransferProgress {
        id: String,
        direction: &'static str,
        blocks_done: u32,
        blocks_total: u32,
    },
    TransferFinished {
        id: String,
        direction: &'static str,
        state: transfers::State,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    SessionRejected {
        peer: PeerId,
        code: u16,
        reason: String,
    },
}

/// Seen only inside `data`: the service builds it, its tasks read it.
pub(super) struct Shared {
    // Who this node is, and what sessions need to start.
    pub(super) keys: Arc<LocalKeys>,
    /// What sessions start from: keys, verified bundles of peers, counters, version, key updates.
    pub(super) session: super::session::Context,
    pub(super) bundles: crate::store::Bundles,
    // The node: its client, and its /commucat/data streams.
    pub(super) node: node::Client,
    pub(super) control: crate::node::streams::Control,
    // What is stored.
    pub(super) outbox: Outbox,
    pub(super) inbox: Inbox,
    pub(super) transfers: Transfers,
    /// The address book: sending to a contact whose key changed waits for the person.
    pub(super) contacts: crate::store::Contacts,
    /// Groups this node is in (`groups-v1.md`).
    pub(super) groups: super::groups::Groups,
    pub(super) cfg: super::Config,
    pub(super) downloads: PathBuf,
    // Signals: events out, wake-ups of delivery workers, the end.
    pub(super) events: crate::broadcast::Broadcast<Event>,
    pub(super) wake: mpsc::Sender<PeerId>,
    pub(super) shutdown: CancellationToken,
    // Bounds on inbound sessions, in all and per peer.
    pub(super) inbound_slots: Arc<Semaphore>,
    pub(super) per_peer: Mutex<HashMap<PeerId, usize>>,
}

impl Shared {
    pub(super) fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// The two ways to wake a delivery worker: something new to send, or the peer just connected.
#[derive(Default)]
pub(super) struct Wake {
    pub(super) work: Notify,
    pub(super) seen: Notify,
}
