//! Whole nodes (libp2p node + data service) in the test process, on the memory transport.

use std::{future::Future, sync::Arc, time::Duration};

use commucat::{
    config::{Config, KadMode},
    crypto::LocalKeys,
    daemon::{self, Daemon},
    data,
    node::{Node, Transport},
    store::Store,
};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

pub struct Peer {
    pub app: Daemon,
    pub keys: Arc<LocalKeys>,
    pub downloads: tempfile::TempDir,
}

/// A node on the memory transport that serves the DHT (every memory address is reachable, but
/// AutoNAT cannot confirm memory addresses), retries deliveries quickly, bootstraps from `boot`.
pub fn config(boot: &[Multiaddr]) -> Config {
    let mut cfg = Config::default();
    cfg.network.listen = vec![Multiaddr::empty().with(Protocol::Memory(0))];
    cfg.bootstrap.peers = boot.to_vec();
    cfg.kad.mode = KadMode::Server;
    cfg.mdns.enabled = false;
    cfg.data.max_retry_secs = 2;
    cfg
}

impl Peer {
    pub async fn start(cfg: &Config, keys: Arc<LocalKeys>, store: Store) -> Peer {
        let downloads = tempfile::tempdir().unwrap();
        let app = daemon::Builder::new(cfg.clone(), keys.clone(), store)
            .transport(Transport::Memory)
            .downloads(downloads.path().to_owned())
            .spawn()
            .await
            .expect("node starts");
        Peer {
            app,
            keys,
            downloads,
        }
    }

    pub async fn new(boot: &[Multiaddr]) -> Peer {
        Self::with_config(&config(boot)).await
    }

    /// A node with fresh keys and a temporary store, configured by `cfg`.
    pub async fn with_config(cfg: &Config) -> Peer {
        Self::start(
            cfg,
            Arc::new(LocalKeys::generate()),
            Store::temporary().unwrap(),
        )
        .await
    }

    pub fn node(&self) -> &Node {
        self.app.node()
    }

    pub fn data(&self) -> &Arc<data::Service> {
        self.app.data()
    }

    pub fn store(&self) -> &Store {
        self.app.store()
    }

    pub fn peer_id(&self) -> PeerId {
        self.keys.peer_id()
    }

    /// The memory address with `/p2p/<id>`, for others' bootstrap lists.
    pub async fn addr(&self) -> Multiaddr {
        let s = self.app.client().status().await.unwrap();
        s.listen_addrs[0]
            .clone()
            .with(Protocol::P2p(self.peer_id()))
    }

    pub async fn stop(self) {
        self.app.shutdown().await.expect("the database flushes");
    }
}

/// Polls `check` every 50 ms until it holds, failing the test after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    super::wait_until(what, timeout, async || check().await).await;
}

/// The sum of a metric's samples in `node`'s registry (0 when it has none).
pub fn metric(node: &Node, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.metrics().read().unwrap()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A bare libp2p swarm on the memory transport (Noise, Yamux), with `behaviour` and a 120 s idle
/// timeout: a peer whose handlers nobody on the team wrote.
pub fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    use libp2p::{Transport as _, core::upgrade};
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|kp| {
            Ok(libp2p::core::transport::MemoryTransport::default()
                .upgrade(upgrade::Version::V1)
                .authenticate(libp2p::noise::Config::new(kp)?)
                .multiplex(libp2p::yamux::Config::default()))
        })
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}
