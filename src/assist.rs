//! Assist mode (`protocols/assist.md`, `protocols/assist-openapi.yaml`): what light clients that
//! cannot run a libp2p node need to connect. An HTTP(S) server (`assist.listen`) with
//! `GET /api/server-info`, `GET|POST /api/p2p/assist` (bearer token), `/metrics` and `/healthz`;
//! the ICE-lite STUN responder on UDP (`assist.stun_listen`); coturn TURN REST credentials.
//!
//! - [`config`]: the `[assist]` section; [`Settings`] adds the node's own.
//! - [`http`]: the router, authentication, per-IP limits, RFC 9457 errors.
//! - [`server_info`], [`p2p_assist`]: the two endpoints; [`probe`]: the paths `p2p_assist` tries.
//! - [`ice`]: ICE credentials, the host candidate, TURN credentials; [`stun`]: the responder.
//! - [`signaling`]: WebSocket signaling at `/api/v1/ws`; [`gateway`]: the node's WebRTC side, light
//!   clients' DataChannels into `/commucat/data` (`protocols/signaling-v1.md`).
//! - [`tokens`]: bearer tokens; [`rate_limit`]: the per-IP limiter and per-session token buckets.
//! - [`pairing`]: codes that pair a light client (`POST /api/pairing`, `/api/pairing/claim`), the
//!   device CA and the paired devices.

pub mod config;
pub mod gateway;
pub mod http;
pub mod ice;
pub mod p2p_assist;
pub mod pairing;
pub mod probe;
pub mod rate_limit;
pub mod server_info;
pub mod signaling;
pub mod stun;
pub mod tokens;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use tokens::Tokens;

use crate::{
    crypto::LocalKeys,
    node::{self, SharedRegistry},
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot listen for the assist API on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the STUN responder on {addr}")]
    Stun {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificate or key ({0})")]
    Tls(#[source] std::io::Error),
    #[error("cannot start the path prober")]
    Prober(#[source] probe::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

/// `commucat_assist_requests_total{endpoint,status}`.
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "assist_requests",
            "Assist API requests, by endpoint and HTTP status",
            m.requests.clone(),
        );
        m
    }

    fn count(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }
}

/// What assist mode runs with: its own section, and the node's (`/api/server-info` reports the
/// node's timeouts, `/api/p2p/assist` whether it relays).
#[derive(Debug, Clone)]
pub struct Settings {
    pub assist: Config,
    pub node: node::Config,
}

/// Everything the handlers share.
pub struct Context {
    pub cfg: Arc<Settings>,
    pub node: node::Client,
    pub data: Arc<crate::data::Service>,
    pub keys: Arc<LocalKeys>,
    pub tokens: Arc<Tokens>,
    pub pairing: Arc<pairing::Pairing>,
    pub ice: Arc<ice::Credentials>,
    pub limiter: Arc<rate_limit::RateLimiter>,
    /// Paths probed per token (`assist.probes_per_token_per_minute`), by token id.
    pub probe_budget: rate_limit::RateLimiter<crate::wire::ClientId>,
    pub prober: probe::Prober,
    /// The STUN responder's bound address.
    pub stun_addr: SocketAddr,
    pub registry: SharedRegistry,
    pub metrics: Metrics,
    /// Signaling sessions and rooms.
    pub signaling: Arc<signaling::Hub>,
    /// Cancelled when assist mode stops.
    pub shutdown: CancellationToken,
}

/// Running assist mode.
pub struct Assist {
    /// Where the HTTP(S) server listens.
    pub http_addr: SocketAddr,
    /// Where the STUN responder listens.
    pub stun_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Assist {
    /// Binds the HTTP(S) server and the STUN responder and serves both until [`Assist::shutdown`].
    pub async fn start(
        cfg: Arc<Settings>,
        node: &node::Node,
        data: Arc<crate::data::Service>,
        keys: Arc<LocalKeys>,
        tokens: Arc<Tokens>,
        pairing: Arc<pairing::Pairing>,
    ) -> Result<Self, Error> {
        let a = &cfg.assist;
        let (listener, http_addr, udp, stun_addr) = bind(a).await?;
        let registry = node.metrics();
        let (metrics, stun_metrics, signaling_metrics) = {
            let mut r = registry.write().unwrap_or_else(|e| e.into_inner());
            (
                Metrics::register(&mut r),
                stun::Metrics::register(&mut r),
                signaling::Metrics::register(&mut r),
            )
        };
        let hub = Arc::new(signaling::Hub::new(a.signaling.clone(), signaling_metrics));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(end_revoked(
            tokens.revocations(),
            hub.clone(),
            shutdown.clone(),
        ));
        let ice = Arc::new(ice::Credentials::new(
            Duration::from_secs(a.ice_ttl_secs.get()),
            a.max_ice_credentials.get(),
        ));
        let limiter = Arc::new(rate_limit::RateLimiter::new(rate_limit::Limits {
            burst: a.rate_burst.get(),
            window: Duration::from_secs(a.rate_window_secs.get()),
            penalty: Duration::from_secs(a.rate_penalty_secs),
        }));
        let tls = tls_config(a).await?;
        pairing.serving_at(client_url(a, http_addr));
        tasks.spawn(stun::serve(
            udp,
            ice.clone(),
            stun::Limits {
                per_ip_per_second: a.stun_per_ip_per_second.get(),
                answers_per_second: a.stun_answers_per_second.get(),
            },
            stun_metrics,
            shutdown.clone(),
        ));
        let prober = probe::Prober::start(shutdown.clone()).map_err(Error::Prober)?;
        if a.gateway.enabled {
            let inbound = hub.attach_node();
            tasks.spawn(gateway::run(
                gateway::Setup {
                    hub: hub.clone(),
                    data: data.clone(),
                    cfg: a.gateway.clone(),
                    turn: a.turn.clone(),
                    ice_ttl_secs: a.ice_ttl_secs.get(),
                    stun: stun::advertised(a.public_ip, stun_addr),
                    revoked: tokens.revocations(),
                    shutdown: shutdown.clone(),
                },
                inbound,
            ));
        }
        let ctx = Arc::new(Context {
            cfg: cfg.clone(),
            node: node.client().clone(),
            data,
            keys,
            tokens,
            pairing,
            ice,
            limiter,
            probe_budget: rate_limit::RateLimiter::new(rate_limit::Limits {
                burst: a.probes_per_token_per_minute.get(),
                window: Duration::from_secs(60),
                penalty: Duration::ZERO,
            }),
            prober,
            stun_addr,
            registry,
            metrics,
            signaling: hub,
            shutdown: shutdown.clone(),
        });
        serve_http(&mut tasks, ctx, listener, tls, &shutdown, a.listen)?;
        tracing::info!(
            http = %http_addr,
            stun = %stun_addr,
            tls = a.tls_cert.is_some(),
            "assist mode serving"
        );
        Ok(Self {
            http_addr,
            stun_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops both servers and waits for them.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Ends the signaling sessions of revoked tokens, as they are revoked.
async fn end_revoked(
    mut revoked: tokio::sync::broadcast::Receiver<crate::wire::ClientId>,
    hub: Arc<signaling::Hub>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = revoked.recv() => match r {
                Ok(client) => {
                    let n = hub.revoke(&client);
                    tracing::info!(%client, sessions = n, "token revoked; its signaling sessions end");
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "revocations came faster than sessions ended");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Where people open the light client: `assist.domain` when set (HTTPS with a certificate), else
/// the address assist mode listens on (loopback when it listens on every interface and no
/// `public_ip` is set).
fn client_url(a: &Config, bound: SocketAddr) -> String {
    let scheme = if a.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match (&a.domain, a.public_ip) {
        (Some(d), _) => d.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) if bound.ip().is_unspecified() => "127.0.0.1".to_owned(),
        (None, None) => bound.ip().to_string(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let default_port = if a.tls_cert.is_some() { 443 } else { 80 };
    match bound.port() {
        p if p == default_port => format!("{scheme}://{host}/client/"),
        p => format!("{scheme}://{host}:{p}/client/"),
    }
}

/// Binds the HTTP(S) listener and the STUN responder's socket; with their actual addresses.
async fn bind(
    a: &Config,
) -> Result<
    (
        std::net::TcpListener,
        SocketAddr,
        tokio::net::UdpSocket,
        SocketAddr,
    ),
    Error,
> {
    let listener = std::net::TcpListener::bind(a.listen).map_err(|source| Error::Listen {
        addr: a.listen,
        source,
    })?;
    let http_addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: a.listen,
        source,
    })?;
    let udp = tokio::net::UdpSocket::bind(a.stun_listen)
        .await
        .map_err(|source| Error::Stun {
            addr: a.stun_listen,
            source,
        })?;
    let stun_addr = udp.local_addr().map_err(|source| Error::Stun {
        addr: a.stun_listen,
        source,
    })?;
    Ok((listener, http_addr, udp, stun_addr))
}

/// The TLS configuration `assist.tls_cert` and `assist.tls_key` name, if both are set.
async fn tls_config(a: &Config) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, Error> {
    Ok(match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            // Both ring (QUIC) and aws-lc-rs are compiled in; rustls needs to be told.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(Error::Tls)?,
            )
        }
        _ => None,
    })
}

/// Serves the assist router on `listener` (HTTPS with `tls`) until `shutdown`, then lets requests
/// in progress finish for up to 2 s.
fn serve_http(
    tasks: &mut JoinSet<()>,
    ctx: Arc<Context>,
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: &CancellationToken,
    listen: SocketAddr,
) -> Result<(), Error> {
    let app = http::router(ctx).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let bind_error = |source| Error::Listen {
        addr: listen,
        source,
    };
    match tls {
        Some(tls) => {
            let server = axum_server::from_tcp_rustls(listener, tls)
                .map_err(bind_error)?
                .handle(handle.clone());
            tasks.spawn(async move { log_end(server.serve(app).await) });
        }
        None => {
            let server = axum_server::from_tcp(listener)
                .map_err(bind_error)?
                .handle(handle.clone());
            tasks.spawn(async move { log_end(server.serve(app).await) });
        }
    }
    let stop = shutdown.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        handle.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    Ok(())
}

/// File in the data directory with the address the assist API listens on.
pub const ADDR_FILE: &str = "assist.addr";
/// File in the data directory with the STUN responder's address.
pub const STUN_ADDR_FILE: &str = "stun.addr";

/// Writes `assist.addr` and `stun.addr` (the bound addresses, useful with port 0).
pub fn write_files(data_dir: &std::path::Path, assist: &Assist) -> std::io::Result<()> {
    std::fs::write(data_dir.join(ADDR_FILE), assist.http_addr.to_string())?;
    std::fs::write(data_dir.join(STUN_ADDR_FILE), assist.stun_addr.to_string())
}

/// Removes them at shutdown.
pub fn remove_files(data_dir: &std::path::Path) {
    for name in [ADDR_FILE, STUN_ADDR_FILE] {
        let _ = std::fs::remove_file(data_dir.join(name));
    }
}

fn log_end(result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "assist server error");
    }
}
