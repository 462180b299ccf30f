//! `/commucat/data/1.0.0` (`protocols/data-v1.md`): framing ([`codec`]), end-to-end sessions
//! ([`session`]).

pub mod codec;
pub mod session;

use libp2p::StreamProtocol;

pub use codec::{ErrorCode, Frame, Inner};

/// The data protocol's stream protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/data/1.0.0");
