//! The control API's names (`protocols/control-api.md` § Names, `protocols/names-v1.md`): claim a
//! handle for this node, give it up, look one up.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{AppState, Problem};
use crate::{names::Handle, node::ResolvedName};

/// `POST /v1/names` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimName {
    /// As typed: normalised by the node (`@` dropped, case folded).
    pub handle: Handle,
}

/// `POST /v1/names` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    /// The handle in normal form, as it is published.
    pub handle: Handle,
    pub peer_id: PeerId,
}

pub(super) async fn claim(
    State(state): State<AppState>,
    body: Result<Json<ClaimName>, JsonRejection>,
) -> Result<Json<Claimed>, Problem> {
    let Json(req) = body?;
    state.node.claim_name(req.handle.clone()).await?;
    Ok(Json(Claimed {
        handle: req.handle,
        peer_id: state.node.peer_id(),
    }))
}

pub(super) async fn release(State(state): State<AppState>) -> Result<StatusCode, Problem> {
    state.node.release_name().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resolve(
    State(state): State<AppState>,
    Path(typed): Path<String>,
) -> Result<Json<ResolvedName>, Problem> {
    let handle =
        Handle::parse(&typed).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    match state.node.resolve_name(handle.clone()).await? {
        Some(r) => Ok(Json(r)),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("nobody holds the name {handle}"),
        )),
    }
}
