//! `/commucat/data/1.0.0` (`protocols/data-v1.md`): framing ([`codec`]), end-to-end sessions
//! ([`session`]), streams in both directions ([`streams`]), and the [`Service`] that serves
//! inbound sessions ([`inbound`]) and delivers the outbox and files ([`delivery`], [`transfer`]).

pub mod codec;
pub mod delivery;
pub mod inbound;
pub mod service;
pub mod session;
pub mod streams;
pub mod transfer;

use libp2p::StreamProtocol;

pub use codec::{ErrorCode, Frame, Inner};
pub use service::{Event, Service};

/// The data protocol's stream protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/data/1.0.0");
