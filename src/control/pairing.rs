//! The control API's pairing (`protocols/control-api.md` § Pairing, `protocols/pairing-v1.md`):
//! a one-time code for a new light client, the paired devices, and unpairing one.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};

use super::{AppState, Problem};
use crate::{assist::pairing::Invitation, store::devices::Device, wire::ClientId};

/// `POST /v1/pairing` (no body): a code for the node's owner to hand to a device.
pub(super) async fn pair(State(state): State<AppState>) -> Result<Json<Invitation>, Problem> {
    Ok(Json(state.pairing.invite(None)?))
}

/// `GET /v1/devices`.
pub(super) async fn devices(State(state): State<AppState>) -> Result<Json<Vec<Device>>, Problem> {
    Ok(Json(state.pairing.devices()?))
}

/// `DELETE /v1/devices/{id}`: unpair; the device's sessions close at once.
pub(super) async fn unpair(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: ClientId = id.parse().map_err(|e: crate::wire::BadClientId| {
        Problem::new(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    state.pairing.revoke(&id)?;
    Ok(StatusCode::NO_CONTENT)
}
