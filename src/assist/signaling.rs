//! WebSocket signaling at `/api/v1/ws` (`protocols/signaling-v1.md`): authenticated clients join
//! rooms and relay `offer` / `answer` / `ice-candidate` messages to each other and to the node's
//! WebRTC gateway (reserved id [`NODE_ID`]).
//!
//! - [`wire`]: the messages both ways (`protocols/signaling-v1.md` §3–§4), close codes, error codes.
//! - [`hub`]: every session, room and limit under one lock that is never held across an await.
//!   Each session has a bounded send queue (messages and bytes); a session whose queue is full is
//!   disconnected, never buffered without bound.
//! - [`session`]: the upgrade (token first), each session's reader (message size limit, per-session
//!   message rate, idle timeout) and writer (WebSocket pings), and the dispatch of one message.

pub mod hub;
pub mod session;
pub mod wire;

use std::time::Duration;

pub use hub::{Hub, Metrics, Refusal, Registration};
pub use session::{handle, upgrade};
pub use wire::{ErrorCode, Outgoing, Request, ToNode, close};

/// The id under which the node's WebRTC gateway takes part in signaling.
pub const NODE_ID: &str = "node";
/// The subprotocol a browser offers (with `commucat-token.<token>`); the server selects it.
pub const SUBPROTOCOL: &str = "commucat-signaling.v1";
/// Prefix of the subprotocol entry that carries the bearer token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "commucat-token.";
/// Longest room name, bytes.
pub const MAX_ROOM_NAME: usize = 64;
/// WebSocket frames above this many times `max_message_bytes` end the connection without an
/// `error` message (the WebSocket library refuses to buffer them).
pub const HARD_LIMIT_FACTOR: usize = 4;

/// Messages buffered for the gateway; more are refused with `error` (`rate-limited`).
pub const NODE_QUEUE: usize = 1024;

/// Read and write buffer of each session's WebSocket, bytes (messages larger than this are
/// assembled in growing buffers, up to the message limit).
pub const SOCKET_BUFFER: usize = 4096;

/// How long a session the server closes waits for the client's Close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
