//! A CommuCat node: an event loop that owns the libp2p [`libp2p::Swarm`] in one task, and a
//! [`Client`] through which everything else (control API, CLI, tests, simnet) talks to it.
//!
//! The same node runs on real sockets ([`Transport::Network`]) or many in one process on the
//! memory transport ([`Transport::Memory`]).
//!
//! - [`config`]: the node-level configuration sections and [`Config`], what the swarm runs with.
//! - `behaviour`: the composed libp2p behaviours; [`ip_limits`]: per-address connection limits;
//!   [`streams`]: `/commucat/data` streams both ways; [`transport`]: TCP, QUIC, DNS, relay, memory.
//! - `event_loop`: the swarm's owner, routing to its concerns (connectivity, queries, presence,
//!   traversal); `client`, `command`, `event`: how others talk to it.
//!
//! [`Node::spawn`] starts the swarm alone; a whole node is assembled by [`crate::daemon`].

mod behaviour;
mod client;
mod command;
pub mod config;
mod event;
mod event_loop;
pub mod hold;
pub mod ip_limits;
pub mod streams;
pub mod transport;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use libp2p::{
    PeerId, Swarm,
    metrics::{Metrics, Registry},
    swarm,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use behaviour::{PROTOCOL_VERSION, agent_version, protocols};
pub use client::Client;
pub use command::{
    Connected, ConnectionInfo, Direction, FindSource, FoundPeer, PeerInfo, ResolvedName, Status,
};
pub use config::{Config, Role};
pub use event::{EVENT_BUFFER, Event};
pub use event_loop::{MAX_PENDING_DIALS, MAX_PENDING_FINDS, MAX_PENDING_VALIDATIONS};
pub use transport::Transport;

use crate::{crypto::LocalKeys, store::Store};

/// A metrics registry parts of the node add to after it started.
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// Commands queued for the event loop before senders wait.
pub const COMMAND_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the node has stopped")]
    Stopped,
    #[error("too many {0} in progress (limit {1}); try again later")]
    Busy(&'static str, usize),
    #[error("peer {0} was not found in the DHT")]
    NotFound(PeerId),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("cannot listen: {0}")]
    Listen(String),
    #[error("transport setup: {0}")]
    Transport(#[from] libp2p::noise::Error),
    #[error("mDNS: {0}")]
    Mdns(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("the name {handle} is held by {owner}")]
    NameTaken {
        handle: crate::names::Handle,
        owner: PeerId,
    },
    #[error("the DHT returned records of several owners for {handle}: {}", owners.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    NameConflict {
        handle: crate::names::Handle,
        owners: Vec<PeerId>,
    },
}

/// A running node. Dropping it without [`Node::shutdown`] aborts the event loop.
pub struct Node {
    client: Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    registry: SharedRegistry,
    stream_control: libp2p_stream::Control,
    data_streams: std::sync::Mutex<Option<crate::node::streams::Incoming>>,
    data_control: crate::node::streams::Control,
}

impl Node {
    /// Builds the swarm, opens the listeners, dials bootstrap and remembered peers, and starts the
    /// event loop. Returns once at least one listen address is up. mDNS is never started on the
    /// memory transport (it would advertise `/memory` addresses on the real LAN).
    pub async fn spawn(
        cfg: &Config,
        keys: Arc<LocalKeys>,
        store: &Store,
        transport: Transport,
    ) -> Result<Self, Error> {
        let keypair = keys.identity.keypair().clone();
        let local = keys.peer_id();
        let with_mdns = cfg.mdns.enabled && !matches!(transport, Transport::Memory);
        let mut registry = Registry::with_prefix("commucat");
        let (relay_transport, relay_client) = libp2p::relay::client::new(local);
        let transport = transport::build(
            transport,
            Some(relay_transport),
            &keypair,
            Duration::from_secs(cfg.network.inbound_handshake_timeout_secs.get()),
            &mut registry,
        )?;
        let (data_behaviour, data_streams, data_control) =
            crate::node::streams::new(crate::node::streams::Metrics::register(&mut registry));
        let hold = hold::Behaviour::new(
            hold::holding_limit(cfg.bootstrap.min_peers, cfg.network.trim_connections_to),
            hold::held_by_limit(cfg.network.trim_connections_to),
            hold::Metrics::register(&mut registry),
        );
        let behaviour = behaviour::Behaviour::new(
            &keypair,
            cfg,
            with_mdns,
            relay_client,
            (data_behaviour, hold),
        )
        .map_err(Error::Mdns)?;
        let swarm = Swarm::new(
            transport,
            behaviour,
            local,
            swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(cfg.idle_connection_timeout())
                // multistream-select without waiting for the answer when one protocol is
                // proposed: a stream's first bytes leave with its header (a round trip less
                // before the first message of a session).
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy),
        );
        let metrics = Metrics::new(&mut registry);
        let presence_metrics = event_loop::PresenceMetrics::register(&mut registry);
        let traversal_metrics = event_loop::TraversalMetrics::register(&mut registry);
        let trimmed = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "connections_trimmed",
            "Peers whose connections the connection manager closed (network.trim_connections_above)",
            trimmed.clone(),
        );
        let stream_control = swarm.behaviour().stream.new_control();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_BUFFER);
        let ev_tx = crate::broadcast::Broadcast::new(EVENT_BUFFER);
        let shutdown = CancellationToken::new();
        let peer_book = store.peer_book((&cfg.peerbook).into())?;
        let mut event_loop = event_loop::EventLoop::new(
            swarm,
            cfg,
            event_loop::Channels {
                commands: cmd_rx,
                events: ev_tx.clone(),
                shutdown: shutdown.clone(),
            },
            event_loop::Parts {
                peer_book,
                presence_seq: store.presence_seq()?,
                name_claim: store.name_claim()?,
                keys,
                metrics,
                presence_metrics,
                traversal_metrics,
                trimmed,
            },
        );
        event_loop
            .start(&cfg.network.listen, &cfg.network.external_addresses)
            .await?;
        let task = tokio::spawn(event_loop.run());
        Ok(Self {
            client: Client {
                peer_id: local,
                commands: cmd_tx,
                events: ev_tx,
            },
            shutdown,
            task: Some(task),
            registry: Arc::new(RwLock::new(registry)),
            stream_control,
            data_streams: std::sync::Mutex::new(Some(data_streams)),
            data_control,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn peer_id(&self) -> PeerId {
        self.client.peer_id
    }

    /// The node's Prometheus registry (libp2p swarm, identify, kad, ping and bandwidth metrics, DHT
    /// record validation); other parts of the node register theirs too.
    pub fn metrics(&self) -> SharedRegistry {
        self.registry.clone()
    }

    /// A handle to open and accept `libp2p-stream` streams of protocols other than the data
    /// protocol (the benchmark's raw streams).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.stream_control.clone()
    }

    /// A handle to open `/commucat/data` streams to peers.
    pub fn data_control(&self) -> crate::node::streams::Control {
        self.data_control.clone()
    }

    /// The queue of inbound `/commucat/data` streams, once (the data service takes it); peers are
    /// offered the protocol from then on. `None` when it was taken already.
    pub fn take_data_streams(&self) -> Option<crate::node::streams::Incoming> {
        let incoming = self
            .data_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        incoming.offer();
        Some(incoming)
    }

    /// Stops the event loop and waits for it; open connections are closed.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "event loop ended abnormally");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An error and its sources, without the empty messages of libp2p's boxing layers.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}
