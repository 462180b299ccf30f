//! `GET /api/server-info` (`protocols/assist.md` §3): the node's identity, addresses, protocols,
//! Noise static keys with their rotation schedule, session and presence parameters, and its
//! post-quantum keys. Public: no token.

use std::sync::Arc;

use axum::{Json, extract::State};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use super::Context;
use crate::{http::Problem, node};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `assist.domain`; absent when not configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub peer_id: PeerId,
    pub agent_version: String,
    /// Listen and confirmed external addresses, each ending in `/p2p/<peer_id>`.
    pub multiaddrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
    /// The current Noise static (X25519) public key, hex.
    pub noise_public: String,
    /// The current key and the replaced ones still accepted, newest first.
    pub noise_keys: Vec<NoiseKey>,
    pub supported_patterns: Vec<String>,
    /// Versions of the data protocol (`/commucat/data`, `protocols/data-v1.md`, `data-v2.md`).
    pub supported_versions: Vec<u8>,
    pub session: SessionParams,
    pub presence: PresenceParams,
    pub post_quantum: PostQuantum,
    /// The device CA's Ed25519 public key, hex: what signs paired devices' certificates
    /// (`protocols/pairing-v1.md` §4).
    pub device_ca_public: String,
    pub pairing: PairingParams,
}

/// How light clients pair (`protocols/pairing-v1.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairingParams {
    /// Always `false`: a device pairs only with a code.
    pub auto_approve: bool,
    /// Seconds a pairing code stays valid.
    pub pairing_ttl: u64,
    /// `POST`, bearer token of a paired device: a new code.
    pub issue: String,
    /// `POST`, no token: redeem a code.
    pub claim: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseKey {
    /// The key's generation: 1 for the first, one more at every rotation.
    pub version: u32,
    pub public: String,
    pub valid_after: String,
    /// Absent when keys never rotate (`data.key_rotation_secs = 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotates_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionParams {
    /// Seconds an idle connection (and the sessions on it) stays open.
    pub ttl_seconds: u64,
    /// Seconds between libp2p pings on each connection.
    pub keepalive_interval: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceParams {
    /// Lifetime of the signed DHT presence record.
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostQuantum {
    pub enabled: bool,
    pub kem_algorithm: String,
    pub signature_algorithm: String,
    /// The current bundle's ML-KEM-768 encapsulation key, hex (1184 bytes).
    pub kem_public_hex: String,
}

pub(super) async fn handler(State(ctx): State<Arc<Context>>) -> Result<Json<ServerInfo>, Problem> {
    let status = ctx.node.status().await?;
    Ok(Json(build(&ctx, &status)))
}

fn build(ctx: &Context, status: &node::Status) -> ServerInfo {
    let now = crate::time::unix_secs();
    let entries = ctx.keys.bundle.entries(now);
    let current = ctx.keys.bundle.current();
    let me = status.peer_id;
    let mut multiaddrs: Vec<Multiaddr> = Vec::new();
    for addr in status.external_addrs.iter().chain(&status.listen_addrs) {
        let with_id = addr.clone().with(Protocol::P2p(me));
        if !multiaddrs.contains(&with_id) {
            multiaddrs.push(with_id);
        }
    }
    let cfg = &ctx.cfg;
    ServerInfo {
        domain: cfg.assist.domain.clone(),
        peer_id: me,
        agent_version: status.agent_version.clone(),
        multiaddrs,
        protocols: node::protocols(&cfg.node),
        noise_public: hex::encode(current.bundle().x25519_public()),
        noise_keys: entries
            .iter()
            .map(|e| NoiseKey {
                version: e.generation,
                public: hex::encode(e.keys.bundle().x25519_public()),
                valid_after: crate::time::rfc3339(e.valid_after),
                rotates_at: e.rotates_at.map(crate::time::rfc3339),
                expires_at: e.expires_at.map(crate::time::rfc3339),
            })
            .collect(),
        // Version 1 opens with XK or IK, version 2 with XX or IK (data-v2.md §2).
        supported_patterns: if ctx.data.protocol_version() >= 2 {
            vec!["XK".into(), "IK".into(), "XX".into()]
        } else {
            vec!["XK".into(), "IK".into()]
        },
        supported_versions: (1..=ctx.data.protocol_version()).collect(),
        session: SessionParams {
            ttl_seconds: cfg.node.network.idle_connection_timeout_secs,
            keepalive_interval: cfg.node.network.ping_interval_secs.get(),
        },
        presence: PresenceParams {
            ttl_seconds: cfg.node.presence.ttl_secs,
        },
        device_ca_public: ctx.pairing.ca_public_hex(),
        pairing: PairingParams {
            auto_approve: false,
            pairing_ttl: ctx.pairing.code_ttl_secs(),
            issue: "/api/pairing".into(),
            claim: "/api/pairing/claim".into(),
        },
        post_quantum: PostQuantum {
            enabled: true,
            kem_algorithm: "ML-KEM-768".into(),
            signature_algorithm: "ML-DSA-65".into(),
            kem_public_hex: hex::encode(current.bundle().kem_public()),
        },
    }
}
