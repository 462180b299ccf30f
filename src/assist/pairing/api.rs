//! The assist API's pairing endpoints (`protocols/pairing-v1.md` §5): `POST /api/pairing` for a
//! paired device (bearer token) and `POST /api/pairing/claim` for anyone holding a code.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json,
    extract::{ConnectInfo, State, rejection::JsonRejection},
};

use super::{ClaimRequest, Claimed, Invitation};
use crate::{
    assist::{Context, p2p_assist::TokenId},
    http::Problem,
};

pub(crate) async fn invite(
    State(ctx): State<Arc<Context>>,
    Extension(token): Extension<TokenId>,
) -> Result<Json<Invitation>, Problem> {
    Ok(Json(ctx.pairing.invite(Some(token.0))?))
}

pub(crate) async fn claim(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ClaimRequest>, JsonRejection>,
) -> Result<Json<Claimed>, Problem> {
    let Json(req) = body?;
    // Issuing the device's token writes and flushes the database: off the async workers.
    let pairing = ctx.pairing.clone();
    let claimed = tokio::task::spawn_blocking(move || pairing.claim(peer.ip(), &req))
        .await
        .map_err(|e| {
            Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("the claim did not finish: {e}"),
            )
        })?;
    if let Err(e) = &claimed {
        tracing::info!(ip = %peer.ip(), error = %e, "pairing claim refused");
    }
    Ok(Json(claimed?))
}
