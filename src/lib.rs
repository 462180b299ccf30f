//! CommuCat: a peer-to-peer node. One binary, `commucat`, for desktops and for bootstrap servers.
//!
//! Crate map, lowest layer first: a module uses only modules above it in this list
//! (`docs/architecture.md`, checked by `tests/layering.rs`).
//!
//! - [`time`], [`fsutil`], [`net`], [`json`], [`codec`], [`fec`], [`names`]: leaves: Unix time,
//!   private files written atomically, address facts (per-subscriber keys, public or not, the peer
//!   a multiaddr names), request values as the OpenAPI documents describe them, binary fields of
//!   signed records, RaptorQ, handles people type.
//! - [`identity`]: Ed25519 (PeerId) + ML-DSA-65 keys and their binding (`protocols/identity-v1.md`).
//! - [`crypto`]: key bundle and key ring, the hybrid post-quantum handshake, AEAD
//!   (`protocols/data-v1.md`).
//! - [`wire`]: the frames of `/commucat/data/1.0.0`, checked before anything is allocated, and the
//!   light-client ids DATA_VIA carries ([`wire::ClientId`], [`wire::Via`]).
//! - [`dht`]: Kademlia on `/commucat/kad/1.0.0` and its signed presence records.
//! - [`nat`]: reachability and relay state machines.
//! - [`groups`]: groups' signed membership logs and how they merge (`protocols/groups-v1.md`).
//! - [`store`]: the only code that touches sled: peer book, outbox, inbox, transfers, contacts,
//!   paired devices, tokens, and the commit record that tells a damaged database
//!   (`protocols/store-v1.md`).
//! - [`node`]: the event loop owning the libp2p Swarm, its [`node::Client`], the composed
//!   behaviours and the `/commucat/data` streams.
//! - [`data`]: end-to-end sessions over those streams, and the service that delivers the outbox
//!   and files and serves inbound sessions.
//! - [`http`]: what both HTTP APIs share: problem documents, bearer parsing, the metrics response.
//! - [`assist`]: assist mode for light clients: REST, STUN, TURN credentials, WebSocket
//!   signaling, the WebRTC gateway, pairing by code (`protocols/assist.md`,
//!   `protocols/signaling-v1.md`, `protocols/pairing-v1.md`).
//! - [`control`]: the local control API (HTTP + JSON, bearer token) the CLI and desktop apps use.
//! - [`config`]: layered configuration (defaults < file < `COMMUCAT_*` env < flags) over the
//!   sections each module above owns.
//! - [`daemon`]: the one assembly of a running node, and its ordered shutdown.
//! - [`cli`]: the `commucat` command line.

pub mod assist;
pub mod broadcast;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod data;
pub mod dht;
pub mod fec;
pub mod fsutil;
pub mod groups;
pub mod http;
pub mod identity;
pub mod json;
pub mod names;
pub mod nat;
pub mod net;
pub mod node;
pub mod store;
pub mod time;
pub mod wire;
