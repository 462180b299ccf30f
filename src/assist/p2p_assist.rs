//! `GET|POST /api/p2p/assist` (`protocols/assist.md` §4): fresh Noise device keys, the node's
//! post-quantum keys, ICE and TURN credentials, the transports the node really offers on each path
//! (probed during the request), a RaptorQ multipath plan tried on a sample, and live counters.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Extension, Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
};
use futures::future::join_all;
use libp2p::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use super::{Context, ice};
use crate::{crypto::handshake, http::Problem, node};

pub const DEFAULT_MIN_PATHS: usize = 2;
pub const DEFAULT_MTU: u16 = 1152;
pub const DEFAULT_REPAIR_OVERHEAD: f64 = 0.35;
pub const DEFAULT_PORT: u16 = 443;
/// `fec.mtu` bounds: the IPv4 minimum datagram, and the largest packet of an 8 KiB symbol.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=8196;
/// Longest `address`, `id` or `peer_hint`, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_NAME_LEN: usize = 253;
/// The flow-control window of the throughput model: bytes a stream moves per round trip.
pub const MODEL_WINDOW_BYTES: f64 = 1024.0 * 1024.0;

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

/// A path after validation.
#[derive(Debug, Clone)]
struct Path {
    id: String,
    address: String,
    port: u16,
    priority: i64,
    /// The address probes dial: a client-named path's address once resolved and checked
    /// ([`check_targets`]), so a name cannot resolve to something else between check and dial.
    ip: Option<IpAddr>,
}

/// How long resolving a path's host name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves the paths a client named and refuses any whose address is not public (loopback,
/// private, link-local, … see [`crate::net::is_public`]) unless `allow_private`: probing them
/// would let any token holder map the node's own network. A name counts by every address it
/// resolves to. Nothing is probed before every path passes.
async fn check_targets(paths: &mut [Path], allow_private: bool) -> Result<(), Problem> {
    for (i, path) in paths.iter_mut().enumerate() {
        let ips: Vec<IpAddr> = match path.address.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let lookup = tokio::net::lookup_host((path.address.as_str(), path.port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                    _ => Vec::new(),
                }
            }
        };
        let Some(&first) = ips.first() else {
            return Err(bad(format!(
                "paths[{i}].address: `{}` does not resolve",
                path.address
            )));
        };
        if !allow_private && let Some(ip) = ips.iter().find(|ip| !crate::net::is_public(**ip)) {
            let what = if path.address.parse::<IpAddr>().is_ok() {
                format!("`{}` is not a public address", path.address)
            } else {
                format!("`{}` resolves to {ip}, not a public address", path.address)
            };
            return Err(bad(format!(
                "paths[{i}].address: {what}; loopback, private, link-local and other special \
                 ranges are not probed"
            )));
        }
        path.ip = Some(first);
    }
    Ok(())
}

fn bad(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The checks a `POST /api/p2p/assist` body gets before anything touches the network: JSON that
/// fits [`Request`], then [`validate`]. `Err` with the problem's detail. (The entry point of
/// `fuzz/fuzz_targets/assist_request.rs`.)
pub fn check_request(body: &[u8], max_paths: usize) -> Result<(), String> {
    let req: Request = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    validate(&req, max_paths)
        .map(drop)
        .map_err(|p| p.detail.unwrap_or_default())
}

/// Checks a request against the rules of `protocols/assist.md` §4.1; the error names the field.
fn validate(req: &Request, max_paths: usize) -> Result<(Vec<Path>, usize, u16, f64), Problem> {
    let min_paths = req.min_paths.unwrap_or(DEFAULT_MIN_PATHS as i64);
    if !(1..=max_paths as i64).contains(&min_paths) {
        return Err(bad(format!(
            "min_paths: must be 1 … {max_paths}, got {min_paths}"
        )));
    }
    if req.paths.len() > max_paths {
        return Err(bad(format!(
            "paths: at most {max_paths} paths, got {}",
            req.paths.len()
        )));
    }
    let fec = req.fec.clone().unwrap_or_default();
    let mtu = fec.mtu.unwrap_or(i64::from(DEFAULT_MTU));
    let mtu = u16::try_from(mtu)
        .ok()
        .filter(|m| MTU_RANGE.contains(m))
        .ok_or_else(|| {
            bad(format!(
                "fec.mtu: must be {} … {}, got {mtu}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ))
        })?;
    let overhead = fec.repair_overhead.unwrap_or(DEFAULT_REPAIR_OVERHEAD);
    if !(0.0..=1.0).contains(&overhead) {
        return Err(bad(format!(
            "fec.repair_overhead: must be 0.0 … 1.0, got {overhead}"
        )));
    }
    if let Some(hint) = &req.peer_hint
        && hint.chars().count() > MAX_NAME_LEN
    {
        return Err(bad(format!("peer_hint: at most {MAX_NAME_LEN} characters")));
    }
    let mut paths = Vec::with_capacity(req.paths.len());
    for (i, p) in req.paths.iter().enumerate() {
        let address = p.address.as_deref().unwrap_or_default();
        if address.is_empty() {
            return Err(bad(format!("paths[{i}].address: required")));
        }
        if address.chars().count() > MAX_NAME_LEN
            || address.contains(|c: char| c == '/' || c.is_whitespace())
        {
            return Err(bad(format!(
                "paths[{i}].address: not a host name or IP address"
            )));
        }
        let port = p.port.unwrap_or(i64::from(DEFAULT_PORT));
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(format!("paths[{i}].port: must be 1 … 65535, got {port}")))?;
        let id = p.id.clone().unwrap_or_else(|| format!("path-{i}"));
        if id.is_empty() || id.chars().count() > MAX_NAME_LEN {
            return Err(bad(format!("paths[{i}].id: 1 … {MAX_NAME_LEN} characters")));
        }
        if paths.iter().any(|q: &Path| q.id == id) {
            return Err(bad(format!("paths[{i}].id: `{id}` is used twice")));
        }
        if let Some(fp) = &p.reality_fingerprint
            && hex::decode(fp).is_err()
        {
            return Err(bad(format!("paths[{i}].reality_fingerprint: not hex")));
        }
        paths.push(Path {
            id,
            address: address.to_owned(),
            port,
            priority: p.priority.unwrap_or(i64::try_from(i).unwrap_or(i64::MAX)),
            ip: None,
        });
    }
    Ok((paths, min_paths as usize, mtu, overhead))
}

/// The node's own endpoints as paths, when the client names none: confirmed external addresses
/// first, then listen addresses (loopback last), one path per IP address and port.
fn own_paths(status: &node::Status, want: usize) -> Vec<Path> {
    let mut endpoints: Vec<(IpAddr, u16)> = Vec::new();
    let mut listen: Vec<&Multiaddr> = status.listen_addrs.iter().collect();
    listen.sort_by_key(|a| ip_port(a).is_some_and(|(ip, _)| ip.is_loopback()));
    for addr in status.external_addrs.iter().chain(listen) {
        if crate::nat::is_relayed(addr) {
            continue;
        }
        if let Some(ep) = ip_port(addr)
            && !endpoints.contains(&ep)
        {
            endpoints.push(ep);
        }
    }
    endpoints
        .into_iter()
        .take(want.max(DEFAULT_MIN_PATHS))
        .enumerate()
        .map(|(i, (ip, port))| Path {
            id: match i {
                0 => "primary".to_string(),
                1 => "backup".to_string(),
                n => format!("backup-{n}"),
            },
            address: ip.to_string(),
            port,
            priority: i as i64,
            ip: Some(ip),
        })
        .collect()
}

fn ip_port(addr: &Multiaddr) -> Option<(IpAddr, u16)> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let port = match it.next()? {
        Protocol::Tcp(p) | Protocol::Udp(p) => p,
        _ => return None,
    };
    Some((ip, port))
}

/// `(transport name, multiaddr, handshake round trips)` to probe on a path.
fn probe_targets(path: &Path) -> Vec<(&'static str, Multiaddr, u32)> {
    let host = match path.ip.or_else(|| path.address.parse().ok()) {
        Some(IpAddr::V4(ip)) => Protocol::Ip4(ip),
        Some(IpAddr::V6(ip)) => Protocol::Ip6(ip),
        None => Protocol::Dns(path.address.clone().into()),
    };
    let base = Multiaddr::empty().with(host);
    vec![
        // TCP: connect, multistream-select, Noise XX, multistream-select for yamux.
        ("Tcp", base.clone().with(Protocol::Tcp(path.port)), 4),
        // QUIC: the TLS 1.3 handshake.
        (
            "Quic",
            base.with(Protocol::Udp(path.port)).with(Protocol::QuicV1),
            2,
        ),
    ]
}

fn latency_tier(rtt: Duration) -> &'static str {
    match rtt.as_millis() {
        0..50 => "Low",
        50..200 => "Medium",
        _ => "High",
    }
}

fn throughput_tier(rtt: Duration) -> &'static str {
    let bytes_per_sec = MODEL_WINDOW_BYTES / rtt.as_secs_f64().max(1e-4);
    if bytes_per_sec >= 10e6 {
        "High"
    } else if bytes_per_sec >= 1e6 {
        "Medium"
    } else {
        "Low"
    }
}

/// Probes every path's transports in parallel; `Err` lists why each failed.
async fn probe_all(ctx: &Context, paths: &[Path]) -> Vec<Result<Vec<Transport>, String>> {
    let timeout = Duration::from_millis(ctx.cfg.assist.probe_timeout_ms);
    // Relay servers among the peers identify told us about, and ourselves if we are one.
    let me = ctx.node.peer_id();
    let mut relays: Vec<libp2p::PeerId> = ctx
        .node
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.protocols
                .iter()
                .any(|x| x == libp2p::relay::HOP_PROTOCOL_NAME.as_ref())
        })
        .map(|p| p.peer_id)
        .collect();
    if ctx.cfg.node.relay_server() {
        relays.push(me);
    }
    let relays = &relays;
    join_all(paths.iter().map(|path| async move {
        let results = join_all(probe_targets(path).into_iter().map(|(name, addr, rounds)| {
            let prober = ctx.prober.clone();
            async move {
                let r = prober.probe(addr.clone(), timeout).await;
                (name, addr, rounds, r)
            }
        }))
        .await;
        let mut found = Vec::new();
        let mut relay: Option<Duration> = None;
        for (name, addr, rounds, r) in results {
            match r {
                Ok(probed) => {
                    let rtt = probed.elapsed / rounds;
                    found.push(Transport {
                        path_id: path.id.clone(),
                        transport: name.into(),
                        resistance: "Basic".into(),
                        latency: latency_tier(rtt).into(),
                        throughput: throughput_tier(rtt).into(),
                        handshake_ms: millis(probed.elapsed),
                    });
                    if relays.contains(&probed.peer_id) {
                        relay = Some(relay.map_or(rtt, |r| r.min(rtt)));
                    }
                }
                Err(e) => {
                    // Kept out of the answer: an OS error tells a closed port from a filtered
                    // one, which is a port scanner's whole output.
                    tracing::debug!(path = %path.id, %addr, error = %e, "path probe failed");
                }
            }
        }
        if let Some(rtt) = relay {
            // Relayed traffic crosses the measured hop and one more like it (an estimate).
            found.push(Transport {
                path_id: path.id.clone(),
                transport: "Relay".into(),
                resistance: "Basic".into(),
                latency: latency_tier(rtt * 2).into(),
                throughput: throughput_tier(rtt * 2).into(),
                handshake_ms: millis(rtt * 2),
            });
        }
        if found.is_empty() {
            Err(format!("`{}` is unusable", path.id))
        } else {
            Ok(found)
        }
    }))
    .await
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

pub(super) async fn get(
    State(ctx): State<Arc<Context>>,
    Extension(token): Extension<TokenId>,
) -> Result<Json<Response>, Problem> {
    answer(&ctx, &token.0, Request::default()).await.map(Json)
}

pub(super) async fn post(
    State(ctx): State<Arc<Context>>,
    Extension(token): Extension<TokenId>,
    body: Result<Json<Request>, JsonRejection>,
) -> Result<Json<Response>, Problem> {
    let Json(req) = body?;
    answer(&ctx, &token.0, req).await.map(Json)
}

/// The id of the bearer token a request was authenticated with (set by the router).
#[derive(Debug, Clone)]
pub struct TokenId(pub String);

async fn answer(ctx: &Context, token: &str, req: Request) -> Result<Response, Problem> {
    let (mut paths, min_paths, mtu, overhead) = validate(&req, ctx.cfg.assist.max_paths)?;
    if !paths.is_empty() {
        // Each client-named path costs probes: bounded per token.
        let n = u32::try_from(paths.len()).unwrap_or(u32::MAX);
        if let Err(wait) = ctx
            .probe_budget
            .check_n(token.to_owned(), n, Instant::now())
        {
            let mut p = Problem::rate_limited(wait.as_secs_f64().ceil() as u64);
            p.detail = Some(format!(
                "this token may name {} paths per minute; retry in {} s",
                ctx.cfg.assist.probes_per_token_per_minute,
                wait.as_secs_f64().ceil()
            ));
            return Err(p);
        }
        check_targets(&mut paths, ctx.cfg.assist.probe_private_targets).await?;
    }
    let status = ctx.node.status().await?;
    if paths.is_empty() {
        paths = own_paths(&status, min_paths);
    }
    paths.sort_by_key(|p| p.priority);
    let probed = probe_all(ctx, &paths).await;
    let mut transports = Vec::new();
    let mut usable = Vec::new();
    let mut errors = Vec::new();
    for (path, result) in paths.iter().zip(probed) {
        match result {
            Ok(t) => {
                transports.extend(t);
                usable.push(path.id.clone());
            }
            Err(e) => errors.push(e),
        }
    }
    if usable.is_empty() {
        return Err(bad(format!(
            "no usable path: {}",
            if errors.is_empty() {
                "the node has no address to offer".to_string()
            } else {
                errors.join("; ")
            }
        )));
    }
    let per_mille = (overhead * 1000.0).round() as u16;
    let n = usable.len();
    let sample =
        tokio::task::spawn_blocking(move || crate::fec::multipath_sample(mtu, per_mille, n))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let sample_segments = usable
        .iter()
        .cloned()
        .zip(sample.shares.iter().map(|s| Segments {
            total: s.total,
            repair: s.repair,
        }))
        .collect();

    let seed: [u8; 32] = rand::random();
    let device_public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed));
    let keys = ctx.keys.bundle.current();
    let prekey = keys.bundle().x25519_public();
    let identity = &ctx.keys.identity;
    let prekey_signature = identity
        .keypair()
        .sign(&[PREKEY_SIGNATURE_CONTEXT, &prekey[..]].concat())
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let identity_public = identity
        .keypair()
        .public()
        .try_into_ed25519()
        .map(|k| k.to_bytes())
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;

    let (ufrag, password) = ctx.ice.issue();
    let ttl = ctx.ice.ttl().as_secs();
    let expires = crate::time::unix_secs() + ttl;
    let a = &ctx.cfg.assist;
    let candidate_addr = super::stun::advertised(a.public_ip, ctx.stun_addr).or_else(|| {
        status
            .external_addrs
            .iter()
            .find_map(ip_port)
            .map(|(ip, _)| std::net::SocketAddr::new(ip, ctx.stun_addr.port()))
    });
    let counters = ctx.data.counters();
    Ok(Response {
        noise: Noise {
            pattern: "XK".into(),
            prologue_hex: hex::encode(handshake::PROLOGUE),
            device_seed_hex: hex::encode(seed),
            static_public_hex: hex::encode(device_public.as_bytes()),
        },
        pq: Pq {
            identity_public_hex: hex::encode(identity_public),
            signed_prekey_public_hex: hex::encode(prekey),
            signed_prekey_signature_hex: hex::encode(prekey_signature),
            kem_public_hex: hex::encode(keys.bundle().kem_public()),
            signature_public_hex: hex::encode(&identity.binding().ml_dsa_public),
        },
        ice: Ice {
            servers: ice::servers(&a.turn, &ufrag, ttl, expires),
            username_fragment: ufrag,
            password,
            ttl_secs: ttl,
            keepalive_interval_secs: a.keepalive_interval_secs,
            trickle: true,
            expires_at: crate::time::rfc3339(expires),
            lite_candidates: candidate_addr
                .map(ice::host_candidate)
                .into_iter()
                .collect(),
        },
        transports,
        multipath: Multipath {
            fec_mtu: mtu,
            fec_overhead: overhead,
            primary_path: usable[0].clone(),
            sample_segments,
        },
        obfuscation: Obfuscation {
            domain_fronting: false,
            protocol_mimicry: false,
            tor_bridge: false,
        },
        security: Security {
            noise_handshakes: counters.noise(),
            pq_handshakes: counters.post_quantum(),
            active_connections: status.connections,
            rate_limited_ips: ctx.limiter.limited(std::time::Instant::now()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<(), String> {
        let req: Request = serde_json::from_str(json).map_err(|e| e.to_string())?;
        validate(&req, 8)
            .map(drop)
            .map_err(|p| p.detail.unwrap_or_default())
    }

    #[test]
    fn validation_names_the_field() {
        check("{}").unwrap();
        check(r#"{"paths":[{"address":"a.example","port":4001,"id":"x"}],"fec":{"mtu":1200,"repair_overhead":0.4},"min_paths":1}"#).unwrap();
        for (json, field) in [
            (r#"{"min_paths":0}"#, "min_paths"),
            (r#"{"min_paths":9}"#, "min_paths"),
            (r#"{"fec":{"mtu":100}}"#, "fec.mtu"),
            (r#"{"fec":{"mtu":70000}}"#, "fec.mtu"),
            (r#"{"fec":{"repair_overhead":1.5}}"#, "fec.repair_overhead"),
            (r#"{"fec":{"repair_overhead":-0.1}}"#, "fec.repair_overhead"),
            (r#"{"paths":[{"port":1}]}"#, "paths[0].address"),
            (r#"{"paths":[{"address":" "}]}"#, "paths[0].address"),
            (r#"{"paths":[{"address":"a","port":0}]}"#, "paths[0].port"),
            (
                r#"{"paths":[{"address":"a","id":"x"},{"address":"b","id":"x"}]}"#,
                "paths[1].id",
            ),
            (
                r#"{"paths":[{"address":"a","reality_fingerprint":"zz"}]}"#,
                "paths[0].reality_fingerprint",
            ),
            (r#"{"bogus":1}"#, "bogus"),
        ] {
            let err = check(json).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
        let many = format!(r#"{{"paths":[{}]}}"#, [r#"{"address":"a"}"#; 9].join(","));
        assert!(check(&many).unwrap_err().contains("paths"));
        // No field may be null (the OpenAPI document allows none): null is not "left out".
        for json in [
            r#"{"fec":{"repair_overhead":null}}"#,
            r#"{"fec":{"mtu":null}}"#,
            r#"{"fec":null}"#,
            r#"{"min_paths":null}"#,
            r#"{"peer_hint":null}"#,
            r#"{"paths":[{"address":null}]}"#,
            r#"{"paths":[{"address":"a","port":null}]}"#,
        ] {
            let err = check(json).unwrap_err();
            assert!(err.contains("null"), "{json}: {err}");
        }
    }

    #[tokio::test]
    async fn non_public_targets_are_refused_before_any_probe() {
        let path = |address: &str| Path {
            id: "p".into(),
            address: address.into(),
            port: 4001,
            priority: 0,
            ip: None,
        };
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "10.255.0.9",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "localhost",
        ] {
            let mut paths = vec![path(address)];
            let err = check_targets(&mut paths, false).await.unwrap_err();
            let detail = err.detail.unwrap_or_default();
            assert!(
                detail.contains("not a public address"),
                "{address}: {detail}"
            );
            assert!(paths[0].ip.is_none(), "{address}");
            // An operator may allow them; then the probe dials the checked address.
            let mut paths = vec![path(address)];
            check_targets(&mut paths, true).await.unwrap();
            assert!(paths[0].ip.is_some_and(|ip| !crate::net::is_public(ip)));
        }
        let mut paths = vec![path("1.1.1.1")];
        check_targets(&mut paths, false).await.unwrap();
        assert_eq!(
            probe_targets(&paths[0])[0].1.to_string(),
            "/ip4/1.1.1.1/tcp/4001"
        );
    }

    #[test]
    fn tiers_follow_the_round_trip_time() {
        assert_eq!(latency_tier(Duration::from_millis(1)), "Low");
        assert_eq!(latency_tier(Duration::from_millis(120)), "Medium");
        assert_eq!(latency_tier(Duration::from_millis(400)), "High");
        assert_eq!(throughput_tier(Duration::from_millis(1)), "High");
        assert_eq!(throughput_tier(Duration::from_millis(500)), "Medium");
        assert_eq!(throughput_tier(Duration::from_secs(2)), "Low");
    }
}
