//! The control API's groups (`protocols/control-api.md` § Groups, `protocols/groups-v1.md`): make
//! one, change its members, leave it, send to it. A group is named in a path by its id (32 hex
//! digits) or by its name when no other group of this node has it.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};

use super::{AppState, Problem, contacts::Recipient};
use crate::{
    data::groups::{Error, GroupInfo},
    groups::{GroupId, Op},
};

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NoSuchGroup(_) => StatusCode::NOT_FOUND,
            Error::NotMember(_) | Error::NotAdmin(_) => StatusCode::FORBIDDEN,
            Error::BadName | Error::TooLarge(_) => StatusCode::BAD_REQUEST,
            Error::Refused(_) => StatusCode::CONFLICT,
            Error::TooMany => StatusCode::INSUFFICIENT_STORAGE,
            Error::Store(crate::store::Error::Full(..)) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, e.to_string())
    }
}

/// `POST /v1/groups` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
}

/// `POST /v1/groups/{group}/members` and `/admins` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// A peer id, an `@handle` or a contact's label.
    pub peer: Recipient,
}

/// `POST /v1/groups/{group}/messages` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMessage {
    pub body: String,
}

/// `POST /v1/groups/{group}/files` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Absolute path of a file the node can read.
    pub path: std::path::PathBuf,
}

/// `POST /v1/groups/{group}/messages` answer: one queued copy per other member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSent {
    pub group: GroupId,
    /// This node's number for the message in the group.
    pub sender_seq: u64,
    pub copies: Vec<crate::store::outbox::Message>,
}

/// The group a path names: its id, or a name only one of this node's groups has.
fn group_of(state: &AppState, named: &str) -> Result<GroupId, Problem> {
    if let Ok(id) = named.parse::<GroupId>() {
        return Ok(id);
    }
    let matching: Vec<GroupId> = state
        .data
        .groups()
        .list()
        .into_iter()
        .filter(|g| g.name == named)
        .map(|g| g.id)
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no group is called {named:?} (nor has that id)"),
        )),
        _ => Err(Problem::new(
            StatusCode::CONFLICT,
            format!("several groups are called {named:?}: name one by its id"),
        )),
    }
}

/// The member a body or path names. A peer nobody can find is 422: the group in the path exists,
/// what is unknown is the peer the request is about.
async fn member(state: &AppState, to: &Recipient) -> Result<libp2p::PeerId, Problem> {
    super::contacts::peer_of(state, to)
        .await
        .map_err(|p| match p.status {
            404 => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, p.detail),
            _ => p,
        })
}

pub(super) async fn list(State(state): State<AppState>) -> Json<Vec<GroupInfo>> {
    Json(state.data.groups().list())
}

pub(super) async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> Result<Json<GroupInfo>, Problem> {
    let Json(req) = body?;
    Ok(Json(state.data.groups().create(&req.name).await?))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<GroupInfo>, Problem> {
    let id = group_of(&state, &group)?;
    Ok(Json(state.data.groups().get(&id)?))
}

async fn change(state: &AppState, group: &str, op: Op) -> Result<Json<GroupInfo>, Problem> {
    let id = group_of(state, group)?;
    Ok(Json(state.data.groups().change(id, op).await?))
}

/// A change about the member a body names.
async fn about_member(
    state: AppState,
    group: String,
    body: Result<Json<MemberRequest>, JsonRejection>,
    op: fn(libp2p::PeerId) -> Op,
) -> Result<Json<GroupInfo>, Problem> {
    let Json(req) = body?;
    let peer = member(&state, &req.peer).await?;
    change(&state, &group, op(peer)).await
}

pub(super) async fn add(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<GroupInfo>, Problem> {
    about_member(state, group, body, Op::Add).await
}

pub(super) async fn admin(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<GroupInfo>, Problem> {
    about_member(state, group, body, Op::Admin).await
}

pub(super) async fn remove(
    State(state): State<AppState>,
    Path((group, peer)): Path<(String, String)>,
) -> Result<Json<GroupInfo>, Problem> {
    let to: Recipient = peer
        .parse()
        .map_err(|e: String| Problem::new(StatusCode::BAD_REQUEST, e))?;
    let peer = member(&state, &to).await?;
    change(&state, &group, Op::Remove(peer)).await
}

pub(super) async fn leave(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<GroupInfo>, Problem> {
    change(&state, &group, Op::Leave).await
}

pub(super) async fn send(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Result<Json<GroupMessage>, JsonRejection>,
) -> Result<Json<GroupSent>, Problem> {
    let Json(req) = body?;
    let id = group_of(&state, &group)?;
    let (sender_seq, copies) = state.data.groups().send(id, req.body).await?;
    Ok(Json(GroupSent {
        group: id,
        sender_seq,
        copies,
    }))
}

/// `POST /v1/groups/{group}/files`: the file once to each other member, each with the resumable
/// transfer of `data-v1.md`.
pub(super) async fn send_file(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Result<Json<GroupFile>, JsonRejection>,
) -> Result<Json<Vec<crate::store::transfers::Outgoing>>, Problem> {
    let Json(req) = body?;
    if !req.path.is_absolute() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "`path` must be absolute (the node resolves no working directory)".to_owned(),
        ));
    }
    let id = group_of(&state, &group)?;
    let mut out = Vec::new();
    for peer in state.data.groups().others(&id)? {
        out.push(state.data.send_file(peer, req.path.clone()).await?);
    }
    Ok(Json(out))
}
