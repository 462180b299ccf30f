//! The data service: accepts `/commucat/data/1.0.0` streams (one task per session, bounded) and runs
//! delivery workers that carry the outbox and outgoing files to their peers. It talks to the node
//! only through [`node::Client`] and the data streams' control ([`crate::node::streams`]), never from
//! inside the event loop.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::PeerId;
use tokio::{
    sync::{Semaphore, broadcast, mpsc},
    task::JoinSet,
};
use tokio_util::{compat::FuturesAsyncReadCompatExt, sync::CancellationToken};

pub use super::shared::Event;
use super::{
    delivery, inbound,
    session::HandshakeCounters,
    shared::{Shared, Wake},
    transfer,
};
use crate::{
    crypto::LocalKeys,
    node::{self, Node},
    store::{self, Inbox, Outbox, Store, Transfers, Via, outbox, transfers},
};

/// Sessions served at once (streams other peers opened to us).
pub const MAX_INBOUND_SESSIONS: usize = 256;
/// Sessions one peer may have open to us at once.
pub const MAX_SESSIONS_PER_PEER: usize = 8;
/// Peers delivered to at once; the others wait for a free worker.
pub const MAX_DELIVERY_WORKERS: usize = 64;
/// Wake-ups queued for the delivery manager.
pub const WAKE_BUFFER: usize = 1024;
/// How often the delivery manager looks for queued work no worker holds: a wake lost to a full
/// [`WAKE_BUFFER`] (wakes are `try_send`, never waited for) is made up for within this.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Data events buffered per subscriber.
pub const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("message body of {0} bytes exceeds {max} bytes", max = crate::wire::MAX_MESSAGE_BYTES)]
    MessageTooLarge(usize),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send to ourselves")]
    SelfSend,
    #[error("{}", key_changed(.0))]
    KeyChanged(Box<crate::store::contacts::Contact>),
    #[error("the data protocol is already registered on this node")]
    AlreadyRunning,
}

/// What a person is told when a contact's keys changed: what changed and what to do.
fn key_changed(c: &crate::store::contacts::Contact) -> String {
    let label = &c.label;
    let what = match (&c.changed, &c.handle) {
        (Some(k), Some(h)) if k.peer_id != c.pinned.peer_id => {
            format!(
                "@{h} now belongs to another peer ({}), not the one pinned ({})",
                k.peer_id, c.pinned.peer_id
            )
        }
        (Some(k), _) if k.peer_id != c.pinned.peer_id => {
            format!("it now shows the keys of another peer ({})", k.peer_id)
        }
        _ => format!(
            "its peer ({}) now shows another ML-DSA-65 key than the one pinned",
            c.pinned.peer_id
        ),
    };
    format!(
        "not sending to contact {label}: {what}. Nothing goes to it until you compare the new \
         safety number with them (`commucat contact verify {label}`) and accept it \
         (`commucat contact verify {label} --confirm`)"
    )
}

/// The running data service.
pub struct Service {
    shared: Arc<Shared>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl Service {
    /// Starts accepting sessions and delivering what the outbox holds. `downloads` is where received
    /// files go.
    pub fn start(
        node: &Node,
        keys: Arc<LocalKeys>,
        store: &Store,
        cfg: &super::Config,
        downloads: PathBuf,
    ) -> Result<Self, Error> {
        let control = node.data_control();
        let incoming = node.take_data_streams().ok_or(Error::AlreadyRunning)?;
        let (wake, wake_rx) = mpsc::channel(WAKE_BUFFER);
        let events = crate::broadcast::Broadcast::new(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            keys: keys.clone(),
            node: node.client().clone(),
            control,
            outbox: store.outbox()?,
            inbox: store.inbox()?,
            transfers: store.transfers()?,
            bundles: store.bundles()?,
            contacts: store.contacts()?,
            groups: super::groups::Groups::open(
                keys.clone(),
                store.group_logs()?,
                store.outbox()?,
                wake.clone(),
                events.clone(),
            )?,
            session: super::session::Context::new(keys.clone())
                .with_version(cfg.protocol_version)
                .with_rekey(cfg.rekey_policy()),
            cfg: cfg.clone(),
            downloads,
            events,
            wake,
            shutdown: CancellationToken::new(),
            inbound_slots: Arc::new(Semaphore::new(MAX_INBOUND_SESSIONS)),
            per_peer: Mutex::new(HashMap::new()),
        });
        if let Ok(mut registry) = node.metrics().write() {
            shared.session.counters.register(&mut registry);
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(shared.clone(), incoming));
        tasks.spawn(delivery_manager(shared.clone(), wake_rx));
        Ok(Self {
            shared,
            tasks: tokio::sync::Mutex::new(tasks),
        })
    }

    /// Queues a message for `to` durably (the database is flushed before this returns, so a crash
    /// right after cannot lose it) and wakes its delivery. `via` names light clients
    /// (`data-v1.md`, DATA_VIA): the local one that wrote it and/or the receiver's one it is for;
    /// `Via::default()` for none.
    pub async fn send_message(
        &self,
        to: PeerId,
        body: String,
        via: Via,
    ) -> Result<outbox::Message, Error> {
        if to == self.shared.keys.peer_id() {
            return Err(Error::SelfSend);
        }
        self.refuse_changed(&to)?;
        if body.len() > crate::wire::MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge(body.len()));
        }
        let msg = self.shared.outbox.enqueue(to, body, via)?;
        // The worker opens its session while the message is committed; it sends the message only
        // once it is durable (`Outbox::pending_durable`).
        let _ = self.shared.wake.try_send(to);
        self.shared.outbox.flush().await?;
        Ok(msg)
    }

    /// Queues the file at `path` (an absolute path the node can read) for `to`. Hashes the file.
    pub async fn send_file(&self, to: PeerId, path: PathBuf) -> Result<transfers::Outgoing, Error> {
        if to == self.shared.keys.peer_id() {
            return Err(Error::SelfSend);
        }
        self.refuse_changed(&to)?;
        let cfg = self.shared.cfg.clone();
        let p = path.clone();
        let t = tokio::task::spawn_blocking(move || transfer::prepare(&p, to, &cfg))
            .await
            .map_err(|e| Error::File {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| Error::File { path, source })?;
        self.shared.transfers.outgoing().put(&t)?;
        self.shared.outbox.flush().await?;
        let _ = self.shared.wake.try_send(to);
        Ok(t)
    }

    /// Refuses `to` while a contact of its shows keys the person has not confirmed
    /// (`protocols/contacts-v1.md` §1).
    fn refuse_changed(&self, to: &PeerId) -> Result<(), Error> {
        match self
            .shared
            .contacts
            .of_peer(to)?
            .into_iter()
            .find(|c| c.changed.is_some())
        {
            Some(c) => Err(Error::KeyChanged(Box::new(c))),
            None => Ok(()),
        }
    }

    /// The keys of `peer` as its last session with this node showed them (its verified bundle).
    pub fn known_keys(&self, peer: &PeerId) -> Option<crate::identity::Binding> {
        delivery::cached_bundle(&self.shared, peer).map(|b| b.binding().clone())
    }

    /// The address book.
    pub fn contacts(&self) -> &crate::store::Contacts {
        &self.shared.contacts
    }

    /// The groups this node is in.
    pub fn groups(&self) -> &super::groups::Groups {
        &self.shared.groups
    }

    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    pub fn inbox(&self) -> &Inbox {
        &self.shared.inbox
    }

    pub fn transfers(&self) -> &Transfers {
        &self.shared.transfers
    }

    /// The newest version of `/commucat/data` this node speaks (`data.protocol_version`).
    pub fn protocol_version(&self) -> u8 {
        self.shared.session.version
    }

    pub fn counters(&self) -> &HandshakeCounters {
        &self.shared.session.counters
    }

    pub fn subscribe(&self) -> crate::broadcast::Subscription<Event> {
        self.shared.events.subscribe()
    }

    /// Stops accepting and delivering; open sessions end.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// Takes one slot of the per-peer session budget; released on drop.
struct PeerSlot {
    shared: Arc<Shared>,
    peer: PeerId,
}

impl PeerSlot {
    fn take(shared: &Arc<Shared>, peer: PeerId) -> Option<Self> {
        let mut map = shared.per_peer.lock().expect("not poisoned");
        let n = map.entry(peer).or_default();
        if *n >= MAX_SESSIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_peer.lock().expect("not poisoned");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, mut incoming: crate::node::streams::Incoming) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let global = shared.inbound_slots.clone().try_acquire_owned();
                let per_peer = PeerSlot::take(&shared, peer);
                let (Ok(global), Some(per_peer)) = (global, per_peer) else {
                    // Over a limit: refuse before any handshake work, saying why.
                    tracing::debug!(%peer, "refusing a data session: limit reached");
                    incoming.metrics().refused("session_limit");
                    sessions.spawn(crate::node::streams::refuse(stream));
                    continue;
                };
                let shared = shared.clone();
                sessions.spawn(async move {
                    inbound::serve(&shared, peer, stream.compat()).await;
                    drop((global, per_peer));
                });
            }
        }
    }
    sessions.shutdown().await;
}

/// Why a worker is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// Something new to send: picked up by a worker with a session, not by one backing off.
    Work,
    /// The peer just connected: a backing-off worker retries now.
    Seen,
}

/// Peers with queued messages or unfinished outgoing transfers.
fn peers_with_work(shared: &Shared) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = shared.outbox.peers_with_pending().unwrap_or_default();
    if let Ok(all) = shared.transfers.outgoing().all() {
        peers.extend(
            all.into_iter()
                .filter(|t| !t.file.state.is_finished())
                .map(|t| t.to),
        );
    }
    peers
}

/// The delivery workers: one per peer with something to send, at most [`MAX_DELIVERY_WORKERS`];
/// the others wait their turn.
#[derive(Default)]
struct Workers {
    running: JoinSet<PeerId>,
    by_peer: HashMap<PeerId, Arc<Wake>>,
    waiting: VecDeque<PeerId>,
    /// The peers in `waiting`.
    queued: HashSet<PeerId>,
}

impl Workers {
    /// Starts waiting peers while there is room.
    fn fill(&mut self, shared: &Arc<Shared>) {
        while self.by_peer.len() < MAX_DELIVERY_WORKERS
            && let Some(peer) = self.waiting.pop_front()
        {
            self.queued.remove(&peer);
            if self.by_peer.contains_key(&peer) {
                continue;
            }
            let w = Arc::new(Wake::default());
            self.by_peer.insert(peer, w.clone());
            let s = shared.clone();
            self.running.spawn(async move {
                delivery::run_worker(&s, peer, &w).await;
                peer
            });
        }
    }

    fn queue(&mut self, peer: PeerId) {
        if !self.by_peer.contains_key(&peer) && self.queued.insert(peer) {
            self.waiting.push_back(peer);
        }
    }
}

/// Keeps one delivery worker per peer with something to send, at most [`MAX_DELIVERY_WORKERS`].
/// Every [`SWEEP_INTERVAL`] (and at start: whatever the outbox and transfers held when we
/// stopped) it picks up queued work no worker holds.
async fn delivery_manager(shared: Arc<Shared>, mut wake: mpsc::Receiver<PeerId>) {
    let mut w = Workers::default();
    let mut node_events = shared.node.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (peer, reason) = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            Some(done) = w.running.join_next(), if !w.running.is_empty() => {
                if let Ok(peer) = done {
                    w.by_peer.remove(&peer);
                    // It may have stopped just as something new arrived.
                    if delivery::has_pending(&shared, &peer) {
                        w.queue(peer);
                    }
                }
                w.fill(&shared);
                continue;
            }
            _ = sweep.tick() => {
                for peer in peers_with_work(&shared) {
                    w.queue(peer);
                }
                w.fill(&shared);
                continue;
            }
            Some(peer) = wake.recv() => (peer, Reason::Work),
            ev = node_events.recv() => match ev {
                Ok(node::Event::PeerConnected { peer_id, .. }) if delivery::has_pending(&shared, &peer_id) => {
                    (peer_id, Reason::Seen)
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if let Some(worker) = w.by_peer.get(&peer) {
            match reason {
                Reason::Work => worker.work.notify_one(),
                Reason::Seen => worker.seen.notify_one(),
            }
            continue;
        }
        w.queue(peer);
        w.fill(&shared);
    }
    w.running.shutdown().await;
}
