//! Signaling messages (`protocols/signaling-v1.md` §3–§4): what clients send ([`Request`], typed by
//! its `type`), what the server sends ([`Outgoing`]), error and close codes, and why a session
//! ended (`Reason`).

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::ClientId;

/// WebSocket close codes the server uses (RFC 6455 §7.4 and the private range).
pub mod close {
    /// A message above `max_message_bytes`.
    pub const TOO_LARGE: u16 = 1009;
    /// Policy: rate limit exceeded for too long.
    pub const POLICY: u16 = 1008;
    /// The session's send queue overflowed (the client reads too slowly).
    pub const SLOW_READER: u16 = 4000;
    /// No frame from the client within `idle_timeout_secs`.
    pub const IDLE: u16 = 4001;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The session's token was revoked (`commucat token revoke`, `commucat devices revoke`).
    pub const REVOKED: u16 = 4003;
}

/// Codes of `error` messages (payload `{code, message}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadMessage,
    UnknownType,
    TooLarge,
    RateLimited,
    BadRoom,
    TooManyRooms,
    RoomFull,
    NotInRoom,
    UnknownPeer,
    MissingTarget,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad-message",
            Self::UnknownType => "unknown-type",
            Self::TooLarge => "too-large",
            Self::RateLimited => "rate-limited",
            Self::BadRoom => "bad-room",
            Self::TooManyRooms => "too-many-rooms",
            Self::RoomFull => "room-full",
            Self::NotInRoom => "not-in-room",
            Self::UnknownPeer => "unknown-peer",
            Self::MissingTarget => "missing-target",
        }
    }
}

/// A message as a client sends it, by its `type`. `from` is read and ignored: the server sets it.
/// A `type` this server does not know is [`Request::Unknown`] (answered with `unknown-type`).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Request {
    Join {
        #[serde(default)]
        room: Option<String>,
    },
    Leave {
        #[serde(default)]
        room: Option<String>,
    },
    Ping {
        #[serde(default)]
        payload: Value,
    },
    Pong {},
    Offer(Relayed),
    Answer(Relayed),
    IceCandidate(Relayed),
    #[serde(other)]
    Unknown,
}

/// An `offer`, `answer` or `ice-candidate`: relayed to client `to` (or the node's gateway).
#[derive(Debug, Deserialize)]
pub struct Relayed {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

/// The `type` of a message alone (to name an unknown one in the error).
#[derive(Debug, Deserialize)]
pub struct TypeOnly {
    #[serde(rename = "type")]
    pub kind: String,
}

/// A message as the server sends it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Outgoing {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
}

impl Outgoing {
    pub(super) fn text(&self) -> Utf8Bytes {
        // Serializing a struct of strings and a `Value` cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }

    pub(super) fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: "error".into(),
            from: None,
            to: None,
            room: None,
            payload: serde_json::json!({ "code": code.as_str(), "message": message.into() }),
        }
    }
}

/// A message for the node's gateway.
#[derive(Debug)]
pub struct ToNode {
    pub from: ClientId,
    pub kind: String,
    pub payload: Value,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Closed,
    TooLarge,
    SlowReader,
    Idle,
    RateLimited,
    Shutdown,
    Revoked,
    Error,
}

impl Reason {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::TooLarge => "too_large",
            Self::SlowReader => "slow_reader",
            Self::Idle => "idle",
            Self::RateLimited => "rate_limited",
            Self::Shutdown => "shutdown",
            Self::Revoked => "revoked",
            Self::Error => "error",
        }
    }

    pub(super) fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooLarge => Some((close::TOO_LARGE, "message too large")),
            Self::SlowReader => Some((close::SLOW_READER, "send queue overflow")),
            Self::Idle => Some((close::IDLE, "idle timeout")),
            Self::RateLimited => Some((close::POLICY, "rate limit")),
            Self::Shutdown => Some((close::GOING_AWAY, "server going away")),
            Self::Revoked => Some((close::REVOKED, "token revoked")),
            Self::Closed | Self::Error => None,
        }
    }
}
