//! Path probes of `/api/p2p/assist` (`protocols/assist.md` §4.4): a separate, throwaway libp2p
//! client (its own random identity; TCP + Noise + Yamux and QUIC; no protocols) dials an address
//! the way a light client would, and reports who answered and how long the handshakes took.
//!
//! A separate swarm, not the node's: libp2p refuses to dial a node's own listen addresses, and the
//! node's own endpoints are the paths most often probed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport as _, noise,
    swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts, dummy},
    tcp, yamux,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

/// Probes in progress at once; more wait for the queue.
pub const MAX_PENDING_PROBES: usize = 64;
/// A TCP probe dial ends after this, answered or not.
pub const MAX_DIAL_TIME: Duration = Duration::from_secs(10);

type Reply = oneshot::Sender<Result<Probed, Error>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the probing swarm")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the prober stopped")]
    Stopped,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Dial(#[from] libp2p::swarm::DialError),
}

fn start_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Start(Box::new(e))
}

/// Who answered a probe, and the dial-to-established time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    pub peer_id: PeerId,
    pub elapsed: Duration,
}

/// Handle to the probing swarm's task.
#[derive(Clone)]
pub struct Prober {
    requests: mpsc::Sender<(Multiaddr, Reply)>,
    /// The probing swarm's task: it stops at `shutdown`, or when the last clone of this goes.
    _task: Arc<AbortOnDropHandle<()>>,
}

impl Prober {
    /// Starts the probing swarm; it stops when `shutdown` is cancelled.
    pub fn start(shutdown: CancellationToken) -> Result<Self, Error> {
        let swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            // TCP with a bound on the whole dial: a SYN into a black hole would otherwise hold a
            // probe slot for the OS's two minutes of retries (QUIC gives up after 5 s by itself).
            .with_other_transport(|key| {
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .timeout(MAX_DIAL_TIME),
                )
            })
            .map_err(start_error)?
            .with_dns()
            .map_err(start_error)?
            .with_behaviour(|_| dummy::Behaviour)
            .map_err(start_error)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(1)))
            .build();
        let (requests, rx) = mpsc::channel(MAX_PENDING_PROBES);
        let task = AbortOnDropHandle::new(tokio::spawn(run(swarm, rx, shutdown)));
        Ok(Self {
            requests,
            _task: Arc::new(task),
        })
    }

    /// Dials `addr` (no peer id expected) and waits up to `timeout` for the connection.
    pub async fn probe(&self, addr: Multiaddr, timeout: Duration) -> Result<Probed, Error> {
        let (tx, rx) = oneshot::channel();
        let work = async {
            self.requests
                .send((addr, tx))
                .await
                .map_err(|_| Error::Stopped)?;
            rx.await.map_err(|_| Error::Stopped)?
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }
}

async fn run(
    mut swarm: Swarm<dummy::Behaviour>,
    mut requests: mpsc::Receiver<(Multiaddr, Reply)>,
    shutdown: CancellationToken,
) {
    let mut pending: HashMap<ConnectionId, (Instant, Reply)> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            request = requests.recv(), if pending.len() < MAX_PENDING_PROBES => {
                let Some((addr, reply)) = request else { return };
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match swarm.dial(opts) {
                    Ok(()) => {
                        pending.insert(id, (Instant::now(), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    if let Some((started, reply)) = pending.remove(&connection_id) {
                        let _ = reply.send(Ok(Probed { peer_id, elapsed: started.elapsed() }));
                    }
                    swarm.close_connection(connection_id);
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                    if let Some((_, reply)) = pending.remove(&connection_id) {
                        let _ = reply.send(Err(error.into()));
                    }
                }
                _ => {}
            },
        }
    }
}
