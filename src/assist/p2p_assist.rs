//! `GET|POST /api/p2p/assist` (`protocols/assist.md` §4): fresh Noise device keys, the node's
//! post-quantum keys, ICE and TURN credentials, the transports the node really offers on each path
//! (probed during the request), a RaptorQ multipath plan tried on a sample, and live counters.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Context, ice};
use crate::{crypto::handshake, http::Problem, node};
use axum::{
    Extension, Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
};
use futures::future::join_all;
use libp2p::{Multiaddr, multiaddr::Protocol};

mod schema;

pub use schema::{
    FecHint, Ice, Multipath, Noise, Obfuscation, PREKEY_SIGNATURE_CONTEXT, PathHint, Pq, Request,
    Response, Security, Segments, Transport,
};

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
/// fits [`Request`], then `validate`. `Err` with the problem's detail. (The entry point of
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
    let timeout = Duration::from_millis(ctx.cfg.assist.probe_timeout_ms.get());
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
    answer(&ctx, token.0, Request::default()).await.map(Json)
}

pub(super) async fn post(
    State(ctx): State<Arc<Context>>,
    Extension(token): Extension<TokenId>,
    body: Result<Json<Request>, JsonRejection>,
) -> Result<Json<Response>, Problem> {
    let Json(req) = body?;
    answer(&ctx, token.0, req).await.map(Json)
}

/// The id of the bearer token a request was authenticated with (set by the router).
#[derive(Debug, Clone)]
pub struct TokenId(pub crate::wire::ClientId);

async fn answer(
    ctx: &Context,
    token: crate::wire::ClientId,
    req: Request,
) -> Result<Response, Problem> {
    let (mut paths, min_paths, mtu, overhead) = validate(&req, ctx.cfg.assist.max_paths.get())?;
    if !paths.is_empty() {
        charge_probes(ctx, token, paths.len())?;
        check_targets(&mut paths, ctx.cfg.assist.probe_private_targets).await?;
    }
    let status = ctx.node.status().await?;
    if paths.is_empty() {
        paths = own_paths(&status, min_paths);
    }
    paths.sort_by_key(|p| p.priority);
    let (transports, usable) = probe_usable(ctx, &paths).await?;
    let per_mille = (overhead * 1000.0).round() as u16;
    let n = usable.len();
    let sample =
        tokio::task::spawn_blocking(move || crate::fec::multipath_sample(mtu, per_mille, n))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    let sample_segments = usable
        .iter()
        .cloned()
        .zip(sample.shares.iter().map(|s| Segments {
            total: s.total,
            repair: s.repair,
        }))
        .collect();
    let (noise, pq) = device_keys(ctx)?;
    let counters = ctx.data.counters();
    Ok(Response {
        noise,
        pq,
        ice: ice_offer(ctx, &status),
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

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Each client-named path costs probes: `n` of the token's per-minute budget, or 429.
fn charge_probes(ctx: &Context, token: crate::wire::ClientId, n: usize) -> Result<(), Problem> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    ctx.probe_budget
        .check_n(token, n, Instant::now())
        .map_err(|wait| {
            let mut p = Problem::rate_limited(wait.as_secs_f64().ceil() as u64);
            p.detail = Some(format!(
                "this token may name {} paths per minute; retry in {} s",
                ctx.cfg.assist.probes_per_token_per_minute,
                wait.as_secs_f64().ceil()
            ));
            p
        })
}

/// Probes `paths`: the transports that answered, and the ids of the paths that had one; 400 when
/// none did.
async fn probe_usable(
    ctx: &Context,
    paths: &[Path],
) -> Result<(Vec<Transport>, Vec<String>), Problem> {
    let probed = probe_all(ctx, paths).await;
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
    Ok((transports, usable))
}

/// A fresh Noise static key for the device, and the node's keys it handshakes against.
fn device_keys(ctx: &Context) -> Result<(Noise, Pq), Problem> {
    let seed: [u8; 32] = rand::random();
    let device_public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed));
    let keys = ctx.keys.bundle.current();
    let prekey = keys.bundle().x25519_public();
    let identity = &ctx.keys.identity;
    let prekey_signature = identity
        .keypair()
        .sign(&[PREKEY_SIGNATURE_CONTEXT, &prekey[..]].concat())
        .map_err(internal)?;
    let identity_public = identity
        .keypair()
        .public()
        .try_into_ed25519()
        .map(|k| k.to_bytes())
        .map_err(internal)?;
    Ok((
        Noise {
            pattern: "XK".into(),
            prologue_hex: hex::encode(handshake::PROLOGUE),
            device_seed_hex: hex::encode(seed),
            static_public_hex: hex::encode(device_public.as_bytes()),
        },
        Pq {
            identity_public_hex: hex::encode(identity_public),
            signed_prekey_public_hex: hex::encode(prekey),
            signed_prekey_signature_hex: hex::encode(prekey_signature),
            kem_public_hex: hex::encode(keys.bundle().kem_public()),
            signature_public_hex: hex::encode(&identity.binding().ml_dsa_public),
        },
    ))
}

/// ICE credentials for the STUN responder, TURN servers, and the responder's host candidate.
fn ice_offer(ctx: &Context, status: &node::Status) -> Ice {
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
    Ice {
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
    }
}

#[cfg(test)]
mod tests;
