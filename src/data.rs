//! `/commucat/data/1.0.0` (`protocols/data-v1.md`) above the wire format ([`crate::wire`]) and the
//! node's streams ([`crate::node::streams`]): end-to-end sessions ([`session`]) and the [`Service`]
//! that serves inbound sessions ([`inbound`]) and delivers the outbox and files ([`delivery`],
//! [`transfer`]), and the groups it is in ([`groups`]: logs, fan-out, sync). Its tasks share
//! `shared::Shared`; [`config`] is the `[data]` section.

pub mod config;
pub mod delivery;
pub mod groups;
pub mod inbound;
pub mod service;
pub mod session;
mod shared;
pub mod transfer;

pub use crate::wire::{ErrorCode, Frame, Inner, PROTOCOL};
pub use config::Config;
pub use service::{Event, Service};
