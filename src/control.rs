//! The local control API: HTTP + JSON for the CLI and desktop apps, on `control.listen`
//! (127.0.0.1:5731 by default). Every request needs `Authorization: Bearer <token>`; the token is
//! created at start and written, with the actual address, to `DATA_DIR/control.token` and
//! `DATA_DIR/control.addr` (mode 0600). Errors are RFC 9457 `application/problem+json`.
//!
//! Spec: `protocols/control-api.md`.

pub mod client;
pub mod contacts;
pub mod data;
pub mod groups;
pub mod names;
pub mod pairing;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response, Sse, sse},
    routing::{get, post},
};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, broadcast::error::RecvError};
use tokio_util::sync::CancellationToken;

pub use client::Client;

use crate::{
    http::Problem,
    identity::Binding,
    net::peer_id_of,
    node::{self, SharedRegistry, agent_version},
};

/// The control API's paths (`protocols/control-api.md`), for the router and for clients.
pub mod routes {
    pub const ID: &str = "/v1/id";
    pub const STATUS: &str = "/v1/status";
    pub const PEERS: &str = "/v1/peers";
    pub const FIND_PEER: &str = "/v1/dht/find-peer";
    pub const CONNECT: &str = "/v1/connect";
    pub const EVENTS: &str = "/v1/events";
    pub const MESSAGES: &str = "/v1/messages";
    pub const OUTBOX: &str = "/v1/outbox";
    pub const INBOX: &str = "/v1/inbox";
    pub const INBOX_STREAM: &str = "/v1/inbox/stream";
    pub const FILES: &str = "/v1/files";
    pub const TRANSFERS: &str = "/v1/transfers";
    pub const TRANSFER: &str = "/v1/transfers/{id}";
    pub const METRICS: &str = "/v1/metrics";
    pub const TOKENS: &str = "/v1/assist/tokens";
    pub const TOKEN: &str = "/v1/assist/tokens/{id}";
    pub const NAMES: &str = "/v1/names";
    pub const NAME: &str = "/v1/names/{handle}";
    pub const CONTACTS: &str = "/v1/contacts";
    pub const CONTACT: &str = "/v1/contacts/{label}";
    pub const SAFETY_NUMBER: &str = "/v1/contacts/{label}/safety-number";
    pub const CONFIRM: &str = "/v1/contacts/{label}/confirm";
    pub const PAIRING: &str = "/v1/pairing";
    pub const DEVICES: &str = "/v1/devices";
    pub const DEVICE: &str = "/v1/devices/{id}";
    pub const GROUPS: &str = "/v1/groups";
    pub const GROUP: &str = "/v1/groups/{group}";
    pub const GROUP_MEMBERS: &str = "/v1/groups/{group}/members";
    pub const GROUP_MEMBER: &str = "/v1/groups/{group}/members/{peer}";
    pub const GROUP_ADMINS: &str = "/v1/groups/{group}/admins";
    pub const GROUP_LEAVE: &str = "/v1/groups/{group}/leave";
    pub const GROUP_MESSAGES: &str = "/v1/groups/{group}/messages";
    pub const GROUP_FILES: &str = "/v1/groups/{group}/files";
}

/// File in the data directory holding the address the control API listens on.
pub const ADDR_FILE: &str = "control.addr";
/// File in the data directory holding the bearer token.
pub const TOKEN_FILE: &str = "control.token";
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests served at once; more wait.
pub const MAX_CONCURRENT_REQUESTS: usize = 128;
/// `GET /v1/events` streams open at once; more get 503.
pub const MAX_EVENT_STREAMS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[control]` section.
pub struct Config {
    /// Address of the local control API (HTTP + JSON, bearer token). Port 0 picks a free port; the
    /// actual address is written to `DATA_DIR/control.addr`.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5731)),
        }
    }
}

/// A bearer token: 32 random bytes, hex-encoded.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn generate() -> Self {
        Self(hex::encode(rand::random::<[u8; 32]>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Writes `control.addr` and `control.token` into the data directory (mode 0600).
pub fn write_files(data_dir: &Path, addr: SocketAddr, token: &Token) -> std::io::Result<()> {
    crate::fsutil::write_private(&data_dir.join(TOKEN_FILE), token.0.as_bytes())?;
    crate::fsutil::write_private(&data_dir.join(ADDR_FILE), addr.to_string().as_bytes())
}

/// Removes the files again (clean shutdown), so clients see at once that no node is running.
pub fn remove_files(data_dir: &Path) {
    for name in [ADDR_FILE, TOKEN_FILE] {
        let _ = std::fs::remove_file(data_dir.join(name));
    }
}

/// `GET /v1/id`, and `commucat id --json` without a running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Id {
    #[serde(flatten)]
    pub binding: Binding,
    pub agent_version: String,
}

impl Id {
    pub fn new(binding: Binding) -> Self {
        Self {
            binding,
            agent_version: agent_version(),
        }
    }
}

/// `POST /v1/dht/find-peer` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindPeerRequest {
    /// A peer id, an `@handle` or a contact's label.
    pub peer_id: contacts::Recipient,
}

/// `POST /v1/connect` body: a peer id (addresses looked up in the DHT unless given), or a
/// multiaddr ending in `/p2p/<id>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_id: Option<contacts::Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<Multiaddr>,
}

/// `GET /v1/status`: the node's status and the data service's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub node: node::Status,
    pub data: data::DataStatus,
}

#[derive(Clone)]
struct AppState {
    node: node::Client,
    data: Arc<crate::data::Service>,
    id: Arc<Id>,
    assist_tokens: Arc<crate::assist::Tokens>,
    pairing: Arc<crate::assist::pairing::Pairing>,
    token: Token,
    metrics: SharedRegistry,
    event_streams: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// What the control API drives.
pub struct Parts {
    pub node: node::Client,
    pub data: Arc<crate::data::Service>,
    pub binding: Binding,
    pub assist_tokens: Arc<crate::assist::Tokens>,
    pub pairing: Arc<crate::assist::pairing::Pairing>,
    pub metrics: SharedRegistry,
}

/// `POST /v1/assist/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueTokenRequest {
    #[serde(deserialize_with = "crate::json::integer")]
    pub ttl_secs: u64,
}

/// The control API as an axum router. `shutdown` ends open event streams.
pub fn router(parts: Parts, token: Token, shutdown: CancellationToken) -> Router {
    let state = AppState {
        node: parts.node,
        data: parts.data,
        id: Arc::new(Id::new(parts.binding)),
        assist_tokens: parts.assist_tokens,
        pairing: parts.pairing,
        token,
        metrics: parts.metrics,
        event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        shutdown,
    };
    Router::new()
        .route(routes::ID, get(id))
        .route(routes::STATUS, get(status))
        .route(routes::PEERS, get(peers))
        .route(routes::FIND_PEER, post(find_peer))
        .route(routes::CONNECT, post(connect))
        .route(routes::EVENTS, get(events))
        .route(routes::MESSAGES, post(data::send_message))
        .route(routes::OUTBOX, get(data::outbox))
        .route(routes::INBOX, get(data::inbox))
        .route(routes::INBOX_STREAM, get(data::inbox_stream))
        .route(routes::FILES, post(data::send_file))
        .route(routes::TRANSFERS, get(data::transfers))
        .route(routes::TRANSFER, get(data::transfer))
        .route(routes::METRICS, get(metrics_text))
        .route(routes::TOKENS, get(list_tokens).post(issue_token))
        .route(routes::TOKEN, axum::routing::delete(revoke_token))
        .route(routes::NAMES, post(names::claim).delete(names::release))
        .route(routes::NAME, get(names::resolve))
        .route(routes::CONTACTS, get(contacts::list).post(contacts::add))
        .route(routes::CONTACT, get(contacts::get).delete(contacts::remove))
        .route(routes::SAFETY_NUMBER, get(contacts::safety_number))
        .route(routes::CONFIRM, post(contacts::confirm))
        .route(routes::PAIRING, post(pairing::pair))
        .route(routes::DEVICES, get(pairing::devices))
        .route(routes::DEVICE, axum::routing::delete(pairing::unpair))
        .route(routes::GROUPS, get(groups::list).post(groups::create))
        .route(routes::GROUP, get(groups::get))
        .route(routes::GROUP_MEMBERS, post(groups::add))
        .route(routes::GROUP_MEMBER, axum::routing::delete(groups::remove))
        .route(routes::GROUP_ADMINS, post(groups::admin))
        .route(routes::GROUP_LEAVE, post(groups::leave))
        .route(routes::GROUP_MESSAGES, post(groups::send))
        .route(routes::GROUP_FILES, post(groups::send_file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match crate::http::bearer(&headers) {
        Some(token) if state.token.matches(token) => next.run(request).await,
        Some(_) => {
            Problem::new(StatusCode::UNAUTHORIZED, "wrong bearer token".to_string()).into_response()
        }
        None => Problem::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "missing `Authorization: Bearer <token>`; the token is in DATA_DIR/{TOKEN_FILE}"
            ),
        )
        .into_response(),
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such endpoint".to_string())
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, None)
}

async fn id(State(state): State<AppState>) -> Json<Id> {
    Json((*state.id).clone())
}

async fn status(State(state): State<AppState>) -> Result<Json<Status>, Problem> {
    Ok(Json(Status {
        node: state.node.status().await?,
        data: data::status(&state.data),
    }))
}

async fn peers(State(state): State<AppState>) -> Result<Json<Vec<node::PeerInfo>>, Problem> {
    Ok(Json(state.node.peers().await?))
}

async fn find_peer(
    State(state): State<AppState>,
    body: Result<Json<FindPeerRequest>, JsonRejection>,
) -> Result<Json<node::FoundPeer>, Problem> {
    let Json(req) = body?;
    let peer = contacts::peer_of(&state, &req.peer_id).await?;
    Ok(Json(state.node.find_peer(peer).await?))
}

async fn connect(
    State(state): State<AppState>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Json<node::Connected>, Problem> {
    let Json(req) = body?;
    let from_addrs: Vec<PeerId> = req.addrs.iter().filter_map(peer_id_of).collect();
    let named = match &req.peer_id {
        Some(to) => Some(contacts::peer_of(&state, to).await?),
        None => None,
    };
    let peer = named
        .or_else(|| from_addrs.first().copied())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "give `peer_id`, or `addrs` ending in /p2p/<peer-id>".to_string(),
            )
        })?;
    if from_addrs.iter().any(|p| *p != peer) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the addresses name a different peer".to_string(),
        ));
    }
    Ok(Json(state.node.connect(peer, req.addrs).await?))
}

async fn events(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let permit = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("at most {MAX_EVENT_STREAMS} event streams at once"),
            )
        })?;
    let merged = futures::stream::select(
        subscription(state.node.subscribe()),
        subscription(state.data.subscribe()),
    );
    // The permit lives as long as the stream.
    let stream = futures::StreamExt::map(merged, move |e| {
        let _held = &permit;
        Ok::<_, Infallible>(e)
    });
    let shutdown = state.shutdown.clone();
    let stream =
        futures::StreamExt::take_until(stream, async move { shutdown.cancelled_owned().await });
    Ok(Sse::new(stream).keep_alive(sse::KeepAlive::default()))
}

/// SSE events from a broadcast of serialisable events tagged with `type`; a subscriber that falls
/// behind gets a `lagged` event.
fn subscription<E: Serialize + Clone + Send + Sync + 'static>(
    rx: crate::broadcast::Subscription<E>,
) -> impl futures::Stream<Item = sse::Event> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => {
                let name = serde_json::to_value(&ev)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| "event".into());
                sse::Event::default()
                    .event(name)
                    .json_data(&ev)
                    .unwrap_or_else(|e| sse::Event::default().comment(e.to_string()))
            }
            Err(RecvError::Lagged(missed)) => sse::Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((event, rx))
    })
}

async fn issue_token(
    State(state): State<AppState>,
    body: Result<Json<IssueTokenRequest>, JsonRejection>,
) -> Result<Json<crate::assist::tokens::Issued>, Problem> {
    let Json(req) = body?;
    Ok(Json(state.assist_tokens.issue(req.ttl_secs)?))
}

async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::assist::tokens::TokenInfo>>, Problem> {
    Ok(Json(state.assist_tokens.list()?))
}

/// `DELETE /v1/assist/tokens/{id}`: `id` is a client id or the token itself.
async fn revoke_token(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, Problem> {
    if state.assist_tokens.revoke(&id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no such token".to_string(),
        ))
    }
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, Problem> {
    crate::http::metrics_response(&state.metrics)
}

/// Paths of the control files of a data directory.
pub fn files(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join(ADDR_FILE), data_dir.join(TOKEN_FILE))
}
