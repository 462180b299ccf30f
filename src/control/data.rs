//! Control API endpoints of the data protocol (`protocols/control-api.md`): messages, inbox (with a
//! live stream), outbox, files and transfers.

use std::{convert::Infallible, path::PathBuf};

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Sse, sse},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{AppState, Problem};
use crate::{
    data,
    store::{inbox, outbox, transfers},
};

/// Messages listed per `GET /v1/inbox` / `/v1/outbox` at most.
pub const MAX_LIST: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub to: super::contacts::Recipient,
    pub body: String,
    /// A light client of `to` (its client id) the message is for: `to` pushes it to that client
    /// through its WebRTC gateway (`protocols/signaling-v1.md` §6).
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub client: Option<crate::wire::ClientId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    pub to: super::contacts::Recipient,
    /// Absolute path of a file the node can read.
    pub path: PathBuf,
}

/// The data side of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataStatus {
    pub handshakes_noise: u64,
    pub handshakes_post_quantum: u64,
    /// Key updates finished in version 2 sessions (`data-v2.md` §5).
    pub key_updates: u64,
    pub outbox_queued: usize,
    pub inbox_messages: usize,
}

/// `GET /v1/transfers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferList {
    pub outgoing: Vec<transfers::Outgoing>,
    pub incoming: Vec<transfers::Incoming>,
}

/// One transfer in either direction (`GET /v1/transfers/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub enum Transfer {
    Out(transfers::Outgoing),
    In(transfers::Incoming),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub after: u64,
    pub limit: Option<usize>,
}

fn bad(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl From<data::service::Error> for Problem {
    fn from(e: data::service::Error) -> Self {
        match e {
            data::service::Error::Store(e) => internal(e),
            e @ data::service::Error::KeyChanged(_) => {
                Problem::new(StatusCode::CONFLICT, e.to_string())
            }
            other => bad(other),
        }
    }
}

pub fn status(data: &data::Service) -> DataStatus {
    DataStatus {
        handshakes_noise: data.counters().noise(),
        handshakes_post_quantum: data.counters().post_quantum(),
        key_updates: data.counters().key_updates(),
        outbox_queued: data.outbox().queued(),
        inbox_messages: data.inbox().len(),
    }
}

pub(super) async fn send_message(
    State(state): State<AppState>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> Result<Json<outbox::Message>, Problem> {
    let Json(req) = body?;
    let via = crate::store::Via {
        from_client: None,
        to_client: req.client,
    };
    let to = super::contacts::peer_of(&state, &req.to).await?;
    Ok(Json(state.data.send_message(to, req.body, via).await?))
}

pub(super) async fn outbox(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<outbox::Entry>>, Problem> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    Ok(Json(state.data.outbox().list(limit).map_err(internal)?))
}

pub(super) async fn inbox(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<inbox::Message>>, Problem> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    Ok(Json(
        state
            .data
            .inbox()
            .list(query.after, limit)
            .map_err(internal)?,
    ))
}

/// `GET /v1/inbox/stream?after=N`: the stored messages after `N`, then new ones as they arrive, as
/// server-sent `message` events.
pub(super) async fn inbox_stream(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(query) = query?;
    // Subscribe before listing, so nothing falls between the two.
    let live = state.data.inbox().subscribe();
    let backlog = state
        .data
        .inbox()
        .list(query.after, MAX_LIST)
        .unwrap_or_default();
    let last = backlog.last().map_or(query.after, |m| m.seq);
    let shutdown = state.shutdown.clone();
    let event = |m: &inbox::Message| {
        sse::Event::default()
            .event("message")
            .json_data(m)
            .unwrap_or_else(|e| sse::Event::default().comment(e.to_string()))
    };
    let backlog = futures::stream::iter(
        backlog
            .iter()
            .map(event)
            .map(Ok::<_, Infallible>)
            .collect::<Vec<_>>(),
    );
    let live = futures::stream::unfold((live, last), move |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(m) if m.seq > last => return Some((Ok(event(&m)), (rx, m.seq))),
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let e = sse::Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{missed}}}"));
                    return Some((Ok(e), (rx, last)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let stream =
        futures::StreamExt::take_until(futures::StreamExt::chain(backlog, live), async move {
            shutdown.cancelled_owned().await;
        });
    Ok(Sse::new(stream).keep_alive(sse::KeepAlive::default()))
}

pub(super) async fn send_file(
    State(state): State<AppState>,
    body: Result<Json<SendFile>, JsonRejection>,
) -> Result<Json<transfers::Outgoing>, Problem> {
    let Json(req) = body?;
    if !req.path.is_absolute() {
        return Err(bad(
            "`path` must be absolute (the node resolves no working directory)",
        ));
    }
    let to = super::contacts::peer_of(&state, &req.to).await?;
    Ok(Json(state.data.send_file(to, req.path).await?))
}

pub(super) async fn transfers(
    State(state): State<AppState>,
) -> Result<Json<TransferList>, Problem> {
    let t = state.data.transfers();
    Ok(Json(TransferList {
        outgoing: t.outgoing().all().map_err(internal)?,
        incoming: t.incoming().all().map_err(internal)?,
    }))
}

pub(super) async fn transfer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Transfer>, Problem> {
    let t = state.data.transfers();
    if let Some(out) = t.outgoing().get(&id).map_err(internal)? {
        return Ok(Json(Transfer::Out(out)));
    }
    if let Some(inc) = t.incoming().get(&id).map_err(internal)? {
        return Ok(Json(Transfer::In(inc)));
    }
    Err(Problem::new(
        StatusCode::NOT_FOUND,
        format!("no transfer {id}"),
    ))
}
