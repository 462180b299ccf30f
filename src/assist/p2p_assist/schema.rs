//! The documents of `GET|POST /api/p2p/assist` (`protocols/assist.md` §4, the schemas of
//! `protocols/assist-openapi.yaml`): the request a light client sends and the response it gets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::assist::ice;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathHint>,
    #[serde(default)]
    pub prefer_reality: bool,
    #[serde(
        default,
        deserialize_with = "crate::json::present_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_paths: Option<i64>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub fec: Option<FecHint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathHint {
    /// Required; `Option` so that its absence gets our own message.
    #[serde(default, deserialize_with = "crate::json::present")]
    pub address: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::json::present_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<i64>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::json::present_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<i64>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub reality_fingerprint: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub reality_pem: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FecHint {
    #[serde(
        default,
        deserialize_with = "crate::json::present_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<i64>,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub repair_overhead: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub noise: Noise,
    pub pq: Pq,
    pub ice: Ice,
    pub transports: Vec<Transport>,
    pub multipath: Multipath,
    pub obfuscation: Obfuscation,
    pub security: Security,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    pub pattern: String,
    pub prologue_hex: String,
    pub device_seed_hex: String,
    pub static_public_hex: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pq {
    /// The node's Ed25519 identity key (32 bytes).
    pub identity_public_hex: String,
    /// The current bundle's X25519 key (32 bytes) ...
    pub signed_prekey_public_hex: String,
    /// ... and the identity's Ed25519 signature over `"commucat/prekey/v1" ‖ key` (64 bytes).
    pub signed_prekey_signature_hex: String,
    /// ML-KEM-768 encapsulation key (1184 bytes).
    pub kem_public_hex: String,
    /// ML-DSA-65 verifying key bound to the identity (1952 bytes).
    pub signature_public_hex: String,
}

/// Domain prefix of the signed-prekey signature.
pub const PREKEY_SIGNATURE_CONTEXT: &[u8] = b"commucat/prekey/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ice {
    pub username_fragment: String,
    pub password: String,
    pub ttl_secs: u64,
    pub keepalive_interval_secs: u64,
    pub trickle: bool,
    pub expires_at: String,
    pub servers: Vec<ice::IceServer>,
    pub lite_candidates: Vec<ice::Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    pub path_id: String,
    /// `Tcp`, `Quic` or `Relay`.
    pub transport: String,
    /// `Basic`: plain libp2p over Noise/TLS 1.3, no obfuscation.
    pub resistance: String,
    pub latency: String,
    pub throughput: String,
    /// The measured dial + handshake time, milliseconds.
    pub handshake_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Multipath {
    pub fec_mtu: u16,
    pub fec_overhead: f64,
    pub primary_path: String,
    pub sample_segments: BTreeMap<String, Segments>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    pub total: u32,
    pub repair: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Obfuscation {
    pub domain_fronting: bool,
    pub protocol_mimicry: bool,
    pub tor_bridge: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Security {
    pub noise_handshakes: u64,
    pub pq_handshakes: u64,
    pub active_connections: u32,
    pub rate_limited_ips: usize,
}
