//! The one place a CommuCat node is assembled: the swarm ([`node::Node`]), the data service
//! ([`data::Service`]), assist mode ([`assist::Assist`], when `assist.enabled`) and the control API
//! ([`control`], when given a listener). `commucat run`, `commucat bench`, the integration tests and
//! both simnet modes build their nodes here, so a node under test is the node users run.
//!
//! ```no_run
//! # async fn f(cfg: commucat::config::Config, keys: std::sync::Arc<commucat::crypto::LocalKeys>,
//! #            store: commucat::store::Store) -> Result<(), commucat::daemon::Error> {
//! let app = commucat::daemon::Builder::new(cfg, keys, store)
//!     .downloads("/tmp/downloads".into())
//!     .spawn()
//!     .await?;
//! app.data()
//!     .send_message(app.node().peer_id(), "hi".into(), Default::default())
//!     .await
//!     .ok();
//! app.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`Daemon::shutdown`] stops the parts from the outside in: the control files go first (clients see
//! at once that no node is running), then the control API (its event streams end), assist mode,
//! the data service (sessions end, nothing more is taken from the outbox), the swarm, and last the
//! database is flushed and its clean stop recorded.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    assist,
    config::Config,
    control,
    crypto::LocalKeys,
    data,
    node::{self, Node, Transport},
    store::{self, Store},
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error(transparent)]
    Data(#[from] data::service::Error),
    #[error(transparent)]
    Assist(#[from] assist::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the device CA key: {0}")]
    DeviceCa(#[from] assist::pairing::CaError),
    #[error("no downloads directory: set data.downloads_dir or give one to the builder")]
    NoDownloads,
    #[error("cannot create the downloads directory {path}")]
    Downloads {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the control API's listener: {0}")]
    ControlListener(#[source] std::io::Error),
    #[error("cannot write the control files in {path}")]
    ControlFiles {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to assemble. Everything but the configuration, the keys and the store has a default: the
/// real network, no control API, received files in `data.downloads_dir`.
pub struct Builder {
    cfg: Config,
    keys: Arc<LocalKeys>,
    store: Store,
    transport: Transport,
    downloads: Option<PathBuf>,
    control: Option<tokio::net::TcpListener>,
    data_dir: Option<PathBuf>,
}

impl Builder {
    pub fn new(cfg: Config, keys: Arc<LocalKeys>, store: Store) -> Self {
        let downloads = cfg.data.downloads_dir.clone();
        Self {
            cfg,
            keys,
            store,
            transport: Transport::Network,
            downloads,
            control: None,
            data_dir: None,
        }
    }

    /// Real sockets (the default), or the in-process memory transport with or without a
    /// simulated link.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Where received files go (overrides `data.downloads_dir`); created if missing.
    pub fn downloads(mut self, dir: PathBuf) -> Self {
        self.downloads = Some(dir);
        self
    }

    /// The node's data directory: received files go to `downloads/` in it unless
    /// `data.downloads_dir` says otherwise, and the control and assist files are written there
    /// once everything is up (and removed first at shutdown).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        if self.downloads.is_none() {
            self.downloads = Some(dir.join("downloads"));
        }
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Serves the control API on `listener` with a fresh bearer token.
    pub fn control(mut self, listener: tokio::net::TcpListener) -> Self {
        self.control = Some(listener);
        self
    }

    /// Starts the swarm, the data service, assist mode (if enabled) and the control API (if
    /// given a listener), in that order. A part that fails to start stops the ones before it.
    pub async fn spawn(self) -> Result<Daemon, Error> {
        let Builder {
            cfg,
            keys,
            store,
            transport,
            downloads,
            control,
            data_dir,
        } = self;
        let downloads = downloads.ok_or(Error::NoDownloads)?;
        std::fs::create_dir_all(&downloads).map_err(|source| Error::Downloads {
            path: downloads.clone(),
            source,
        })?;
        let node = Node::spawn(&cfg.node(), keys.clone(), &store, transport).await?;
        let data = match data::Service::start(&node, keys.clone(), &store, &cfg.data, downloads) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                node.shutdown().await;
                return Err(e.into());
            }
        };
        let mut app = Daemon {
            node,
            data,
            assist: None,
            control: None,
            store,
            data_dir,
        };
        match app.start_apis(&cfg, keys, control).await {
            Ok(()) => Ok(app),
            Err(e) => {
                let _ = app.shutdown().await;
                Err(e)
            }
        }
    }
}

/// The running control API.
struct ControlApi {
    addr: SocketAddr,
    token: control::Token,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// A running node: swarm, data service, and the APIs it was built with.
pub struct Daemon {
    node: Node,
    data: Arc<data::Service>,
    assist: Option<assist::Assist>,
    control: Option<ControlApi>,
    store: Store,
    data_dir: Option<PathBuf>,
}

impl Daemon {
    async fn start_apis(
        &mut self,
        cfg: &Config,
        keys: Arc<LocalKeys>,
        control: Option<tokio::net::TcpListener>,
    ) -> Result<(), Error> {
        let tokens = Arc::new(assist::Tokens::new(
            self.store.assist_tokens()?,
            self.store.committer(),
            &cfg.assist.token_hashes,
        ));
        let pairing = Arc::new(assist::pairing::Pairing::new(
            assist::pairing::DeviceCa::load_or_create(self.data_dir.as_deref())?,
            keys.identity.peer_id(),
            tokens.clone(),
            self.store.devices()?,
            &cfg.assist,
        ));
        if cfg.assist.enabled {
            self.assist = Some(
                assist::Assist::start(
                    Arc::new(assist::Settings {
                        assist: cfg.assist.clone(),
                        node: cfg.node(),
                    }),
                    self.node(),
                    self.data.clone(),
                    keys.clone(),
                    tokens.clone(),
                    pairing.clone(),
                )
                .await?,
            );
        }
        if let Some(listener) = control {
            let addr = listener.local_addr().map_err(Error::ControlListener)?;
            let token = control::Token::generate();
            let shutdown = CancellationToken::new();
            let router = control::router(
                control::Parts {
                    node: self.node().client().clone(),
                    data: self.data.clone(),
                    binding: keys.identity.binding().clone(),
                    assist_tokens: tokens,
                    pairing,
                    metrics: self.node().metrics(),
                },
                token.clone(),
                shutdown.clone(),
            );
            let task = tokio::spawn(control::serve(listener, router, shutdown.clone()));
            self.control = Some(ControlApi {
                addr,
                token,
                shutdown,
                task,
            });
        }
        if let Some(dir) = &self.data_dir {
            self.write_files(dir)
                .map_err(|source| Error::ControlFiles {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn write_files(&self, dir: &Path) -> std::io::Result<()> {
        if let Some(c) = &self.control {
            control::write_files(dir, c.addr, &c.token)?;
        }
        if let Some(a) = &self.assist {
            assist::write_files(dir, a)?;
        }
        Ok(())
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn client(&self) -> &node::Client {
        self.node().client()
    }

    pub fn data(&self) -> &Arc<data::Service> {
        &self.data
    }

    pub fn assist(&self) -> Option<&assist::Assist> {
        self.assist.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the control API listens, if it was started.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(|c| c.addr)
    }

    /// The control API's bearer token, if it was started.
    pub fn control_token(&self) -> Option<&control::Token> {
        self.control.as_ref().map(|c| &c.token)
    }

    /// Stops everything in order (see the module docs) and flushes the database. The error is the
    /// flush's: everything else is logged and the shutdown goes on.
    pub async fn shutdown(self) -> Result<(), store::Error> {
        let Daemon {
            node,
            data,
            assist,
            control,
            store,
            data_dir,
        } = self;
        if let Some(dir) = &data_dir {
            control::remove_files(dir);
            assist::remove_files(dir);
        }
        if let Some(c) = control {
            c.shutdown.cancel();
            match c.task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "control API server error"),
                Err(e) => tracing::warn!(error = %e, "control API task failed"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(a) = assist {
            a.shutdown().await;
        }
        data.shutdown().await;
        node.shutdown().await;
        store.close().await
    }
}

#[cfg(test)]
mod tests {
    use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

    use super::*;

    fn options() -> store::Options {
        store::Options {
            cache_mib: 4,
            accept_data_loss: false,
        }
    }

    /// A node with its control API in a real data directory: after `shutdown` the control files
    /// are gone, the API's port is closed, the swarm answers `Stopped`, and the database reopens
    /// from a clean stop with the message that was queued over the API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_everything_and_keeps_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.network.listen = vec![Multiaddr::empty().with(Protocol::Memory(0))];
        cfg.bootstrap.peers.clear();
        cfg.mdns.enabled = false;
        let store = Store::open(dir.path(), options()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Builder::new(cfg, Arc::new(LocalKeys::generate()), store)
            .transport(Transport::Memory)
            .data_dir(dir.path())
            .control(listener)
            .spawn()
            .await
            .unwrap();
        let addr = app.control_addr().unwrap();
        let token = app.control_token().unwrap().as_str().to_owned();
        let (addr_file, token_file) = control::files(dir.path());
        assert_eq!(
            std::fs::read_to_string(&addr_file).unwrap(),
            addr.to_string()
        );
        assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
        assert!(dir.path().join("downloads").is_dir());

        // Queued for a peer that never comes online: it must outlive the node.
        let to = PeerId::random();
        let sent = reqwest::Client::new()
            .post(format!("http://{addr}/v1/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "to": to, "body": "kept" }))
            .send()
            .await
            .unwrap();
        assert!(sent.status().is_success(), "{}", sent.status());
        let client = app.client().clone();

        app.shutdown().await.unwrap();

        assert!(!addr_file.exists() && !token_file.exists());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        assert!(matches!(client.status().await, Err(node::Error::Stopped)));
        assert!(dir.path().join(store::commit::CLEAN_FILE).exists());
        let store = Store::open(dir.path(), options()).unwrap();
        let queued = store.outbox().unwrap().pending(&to, 0, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].body, "kept");
    }
}
