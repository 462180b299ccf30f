//! The assist HTTP router (`protocols/assist-openapi.yaml`): per-IP limits on every `/api/` route
//! (429 + `Retry-After`), bearer tokens on `/api/p2p/assist` (401), a body limit (413), JSON only
//! (415), and RFC 9457 problem documents for every error.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

use super::{Context, p2p_assist, pairing, server_info, signaling};
use crate::http::Problem;

/// Requests served at once; more wait.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;

pub fn router(ctx: Arc<Context>) -> Router {
    let assist = Router::new()
        .route(
            "/api/p2p/assist",
            get(p2p_assist::get).post(p2p_assist::post),
        )
        .route("/api/pairing", post(pairing::api::invite))
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    let api = Router::new()
        .route("/api/server-info", get(server_info::handler))
        .route("/api/v1/ws", get(signaling::upgrade))
        .route("/api/pairing/claim", post(pairing::api::claim))
        .merge(assist)
        .layer(middleware::from_fn_with_state(ctx.clone(), rate_limit));
    Router::new()
        .merge(api)
        .route("/client", get(|| async { Redirect::permanent("/client/") }))
        .route("/client/", get(client_page))
        .route("/client/client.js", get(client_script))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(ctx.clone(), count))
        .layer(DefaultBodyLimit::max(ctx.cfg.assist.max_body_bytes.get()))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(ctx)
}

async fn count(State(ctx): State<Arc<Context>>, request: Request, next: Next) -> Response {
    let endpoint = match request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
    {
        Some("/api/server-info") => "server_info",
        Some("/api/p2p/assist") => "p2p_assist",
        Some("/api/v1/ws") => "signaling",
        Some("/api/pairing") => "pairing",
        Some("/api/pairing/claim") => "pairing_claim",
        Some("/metrics") => "metrics",
        Some("/healthz") => "healthz",
        Some("/client/" | "/client/client.js" | "/client") => "client",
        _ => "other",
    };
    let response = next.run(request).await;
    ctx.metrics.count(endpoint, response.status().as_u16());
    response
}

async fn rate_limit(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match ctx.limiter.check(peer.ip(), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => Problem::rate_limited(wait.as_secs_f64().ceil() as u64).into_response(),
    }
}

async fn require_token(
    State(ctx): State<Arc<Context>>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = crate::http::bearer(request.headers()).map(|t| ctx.tokens.check(t));
    match client {
        Some(Some(id)) => {
            request.extensions_mut().insert(p2p_assist::TokenId(id));
            next.run(request).await
        }
        Some(None) => Problem::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is unknown, expired or revoked".to_string(),
        )
        .into_response(),
        None => Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (get one with `commucat token issue`)"
                .to_string(),
        )
        .into_response(),
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Result<Response, Problem> {
    crate::http::metrics_response(&ctx.registry)
}

/// The browser light client (`protocols/signaling-v1.md`), compiled into the binary.
const CLIENT_HTML: &str = include_str!("client/index.html");
const CLIENT_JS: &str = include_str!("client/client.js");

async fn client_page() -> Response {
    static_file("text/html; charset=utf-8", CLIENT_HTML)
}

async fn client_script() -> Response {
    static_file("text/javascript; charset=utf-8", CLIENT_JS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self' ws: wss:",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such endpoint".to_string())
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, None)
}
