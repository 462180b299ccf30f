//! CommuCat: a peer-to-peer node. One binary, `commucat`, for desktops and for bootstrap servers.
//!
//! Crate map:
//! - [`config`]: layered configuration (defaults < file < `COMMUCAT_*` env < flags).
//! - [`identity`]: Ed25519 (PeerId) + ML-DSA-65 keys and their binding (`protocols/identity-v1.md`).
//! - [`store`]: the sled database (peer book).
//! - [`node`]: the event loop owning the libp2p Swarm, and its [`node::Client`].
//! - [`dht`]: Kademlia on `/commucat/kad/1.0.0`.
//! - [`crypto`]: key bundle, hybrid post-quantum handshake, frame sealing (`protocols/data-v1.md`).
//! - [`nat`]: reachability and address scopes.
//! - [`net`]: IP address facts for limits and checks (per-subscriber keys, public or not).
//! - [`assist`]: assist mode for light clients: REST, STUN, TURN credentials (`protocols/assist.md`).
//! - [`json`]: request values read as the OpenAPI documents describe them.
//! - [`control`]: the local control API (HTTP + JSON, bearer token) the CLI and desktop apps use.
//! - [`cli`]: the `commucat` command line.

pub mod app;
pub mod assist;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod data;
pub mod dht;
pub mod fec;
pub mod fsutil;
pub mod http;
pub mod identity;
pub mod json;
pub mod nat;
pub mod net;
pub mod node;
pub mod store;
pub mod time;
pub mod wire;
