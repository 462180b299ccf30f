//! The control API's address book (`protocols/control-api.md` § Contacts,
//! `protocols/contacts-v1.md`): contacts with pinned keys, safety numbers, and the one place where
//! a recipient as a person names it — PeerId, `@handle` or contact label — becomes a PeerId.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{AppState, Problem};
use crate::{
    identity::Binding,
    names::Handle,
    store::contacts::{AddError, Contact, Label, Seen, Trust},
};

/// How long a send to a contact waits for the DHT to say who holds its handle now and which keys
/// its presence record carries; past it the send goes to the pinned peer (a check that cannot
/// finish refuses nothing; the session's own check still stands).
pub const CONTACT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A peer as a person names it: a PeerId, an `@handle`, or the label of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Recipient {
    Peer(PeerId),
    Name(Handle),
    Contact(Label),
}

impl std::str::FromStr for Recipient {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('@') {
            return Handle::parse(s)
                .map(Recipient::Name)
                .map_err(|e| e.to_string());
        }
        if let Ok(p) = s.parse() {
            return Ok(Recipient::Peer(p));
        }
        Label::parse(s).map(Recipient::Contact).map_err(|e| {
            format!("`{s}` is neither a peer id, an @handle nor a contact label ({e})")
        })
    }
}

impl TryFrom<String> for Recipient {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::Peer(p) => write!(f, "{p}"),
            Recipient::Name(h) => write!(f, "@{h}"),
            Recipient::Contact(l) => write!(f, "{l}"),
        }
    }
}

impl From<Recipient> for String {
    fn from(r: Recipient) -> String {
        r.to_string()
    }
}

impl From<PeerId> for Recipient {
    fn from(p: PeerId) -> Self {
        Recipient::Peer(p)
    }
}

/// `POST /v1/contacts` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddContact {
    pub label: Label,
    /// A PeerId or an `@handle`: its keys are looked up and pinned.
    pub peer: Recipient,
}

/// A contact as the API shows it (`GET /v1/contacts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactInfo {
    pub label: Label,
    /// The pinned peer.
    pub peer_id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
    pub trust: Trust,
    /// The peer now shown for the contact, when its keys changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_peer_id: Option<PeerId>,
    /// Unix seconds.
    pub added_at: u64,
}

impl From<&Contact> for ContactInfo {
    fn from(c: &Contact) -> Self {
        Self {
            label: c.label.clone(),
            peer_id: c.peer_id(),
            handle: c.handle.clone(),
            trust: c.trust(),
            changed_peer_id: c.changed.as_ref().map(|k| k.peer_id),
            added_at: c.added_at,
        }
    }
}

/// `GET /v1/contacts/{label}/safety-number`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyNumber {
    pub label: Label,
    /// The peer the number is for: the changed one when the keys changed (what confirming pins).
    pub peer_id: PeerId,
    /// 60 digits in 12 groups of 5 (`protocols/contacts-v1.md` §2).
    pub safety_number: String,
    pub trust: Trust,
}

fn not_found(label: &Label) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("there is no contact called {label}"),
    )
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn contact(state: &AppState, label: &str) -> Result<Contact, Problem> {
    let label =
        Label::parse(label).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    state
        .data
        .contacts()
        .get(&label)
        .map_err(internal)?
        .ok_or_else(|| not_found(&label))
}

/// The keys to pin for `peer`: those of its last session with us, else its presence record's.
async fn keys_of(state: &AppState, peer: PeerId) -> Result<Binding, Problem> {
    if let Some(k) = state.data.known_keys(&peer) {
        return Ok(k);
    }
    match state.node.presence(peer).await? {
        Some(p) => Ok(p.bundle.binding().clone()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!(
                "no keys for {peer} are known: it never had a session with this node and has no \
                 presence record in the DHT; add it when it is online"
            ),
        )),
    }
}

async fn holder(state: &AppState, handle: &Handle) -> Result<Binding, Problem> {
    match state.node.resolve_name(handle.clone()).await? {
        Some(r) => Ok(r.binding),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("nobody holds the name {handle}"),
        )),
    }
}

/// The PeerId to send to. A contact (by label, or by the handle it was added by) is sent to at its
/// pinned peer, after its handle is resolved again and its presence record looked up: a handle
/// that now names other keys, or a presence record with another ML-DSA-65 key, marks the contact
/// changed, and the data service then refuses it.
pub(super) async fn peer_of(state: &AppState, to: &Recipient) -> Result<PeerId, Problem> {
    let book = state.data.contacts();
    let c = match to {
        Recipient::Peer(p) => return Ok(*p),
        Recipient::Contact(l) => book.get(l).map_err(internal)?.ok_or_else(|| not_found(l))?,
        Recipient::Name(h) => match book.of_handle(h).map_err(internal)? {
            Some(c) => c,
            None => return Ok(holder(state, h).await?.peer_id),
        },
    };
    // A lapsed name, a peer without a presence record, or a DHT that cannot answer in time
    // leaves the pinned keys as they are.
    let by_name = async {
        let h = c.handle.clone()?;
        let found = tokio::time::timeout(CONTACT_CHECK_TIMEOUT, state.node.resolve_name_fresh(h));
        Some(found.await.ok()?.ok()??.binding)
    };
    let by_presence = async {
        let found = tokio::time::timeout(CONTACT_CHECK_TIMEOUT, state.node.presence(c.peer_id()));
        Some(found.await.ok()?.ok()??.bundle.binding().clone())
    };
    let (named, present) = tokio::join!(by_name, by_presence);
    for seen in [named, present].into_iter().flatten() {
        book.observe(&c.label, &seen, Seen::Lookup)
            .map_err(internal)?;
    }
    Ok(c.peer_id())
}

pub(super) async fn add(
    State(state): State<AppState>,
    body: Result<Json<AddContact>, JsonRejection>,
) -> Result<Json<ContactInfo>, Problem> {
    let Json(req) = body?;
    let (keys, handle) = match &req.peer {
        Recipient::Peer(p) => (keys_of(&state, *p).await?, None),
        Recipient::Name(h) => (holder(&state, h).await?, Some(h.clone())),
        Recipient::Contact(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "`peer` must be a peer id or an @handle".to_owned(),
            ));
        }
    };
    if keys.peer_id == state.node.peer_id() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "this node cannot be its own contact".to_owned(),
        ));
    }
    let c = Contact::new(req.label, handle, keys);
    state.data.contacts().add(&c).map_err(|e| match e {
        AddError::Exists(_) => Problem::new(StatusCode::CONFLICT, e.to_string()),
        AddError::Full => Problem::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        AddError::Store(e) => internal(e),
    })?;
    Ok(Json(ContactInfo::from(&c)))
}

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<ContactInfo>>, Problem> {
    let all = state.data.contacts().all().map_err(internal)?;
    Ok(Json(all.iter().map(ContactInfo::from).collect()))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Path(label): Path<String>,
) -> Result<Json<ContactInfo>, Problem> {
    Ok(Json(ContactInfo::from(&contact(&state, &label)?)))
}

pub(super) async fn remove(
    State(state): State<AppState>,
    Path(label): Path<String>,
) -> Result<StatusCode, Problem> {
    let c = contact(&state, &label)?;
    state.data.contacts().remove(&c.label).map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn safety_number(
    State(state): State<AppState>,
    Path(label): Path<String>,
) -> Result<Json<SafetyNumber>, Problem> {
    let c = contact(&state, &label)?;
    let theirs = c.changed.as_ref().unwrap_or(&c.pinned);
    let number = crate::crypto::safety::safety_number(&state.id.binding, theirs)
        .ok_or_else(|| internal("a key without an Ed25519 PeerId"))?;
    Ok(Json(SafetyNumber {
        label: c.label.clone(),
        peer_id: theirs.peer_id,
        safety_number: number,
        trust: c.trust(),
    }))
}

pub(super) async fn confirm(
    State(state): State<AppState>,
    Path(label): Path<String>,
) -> Result<Json<ContactInfo>, Problem> {
    let c = contact(&state, &label)?;
    let c = state
        .data
        .contacts()
        .confirm(&c.label)
        .map_err(internal)?
        .ok_or_else(|| not_found(&c.label))?;
    Ok(Json(ContactInfo::from(&c)))
}
