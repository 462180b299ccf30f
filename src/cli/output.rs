//! What the CLI prints: JSON with `--json`, readable text otherwise.

use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    control::Id,
    node::{Connected, Direction, FoundPeer, PeerInfo},
};

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A list command's output: `value` as JSON with `--json`; else `rows` as a table under `header`,
/// or the sentence `empty` when there are none.
pub fn listing<T: Serialize>(
    value: &T,
    as_json: bool,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
    empty: &str,
) -> anyhow::Result<()> {
    if as_json {
        return json(value);
    }
    let mut all = vec![header.iter().map(|h| h.to_string()).collect()];
    all.extend(rows);
    match all.len() {
        1 => println!("{empty}"),
        _ => print!("{}", table(&all)),
    }
    Ok(())
}

pub fn id(id: &Id, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(id);
    }
    let fingerprint = hex::encode(&Sha256::digest(&id.binding.ml_dsa_public)[..16]);
    println!("Peer ID:         {}", id.binding.peer_id);
    println!(
        "ML-DSA-65 key:   sha256:{fingerprint}… ({} bytes; --json for all of it)",
        id.binding.ml_dsa_public.len()
    );
    println!("Agent:           {}", id.agent_version);
    Ok(())
}

pub fn status(full: &crate::control::Status, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(full);
    }
    let s = &full.node;
    let d = &full.data;
    println!("Peer ID:          {}", s.peer_id);
    println!("Role:             {}", s.role);
    if let Some(name) = &s.name {
        println!("Name:             @{name}");
    }
    println!("Agent:            {}", s.agent_version);
    println!("Reachability:     {}", s.reachability);
    println!("Kademlia mode:    {}", s.kad_mode);
    println!("Connected peers:  {}", s.connected_peers);
    println!("Routing table:    {} peers", s.routing_table_size);
    println!("Peer book:        {} peers", s.peer_book_size);
    println!("Uptime:           {}", duration(s.uptime_secs));
    println!("Outbox:           {} queued", d.outbox_queued);
    println!("Inbox:            {} messages", d.inbox_messages);
    println!(
        "Sessions:         {} Noise handshakes, {} post-quantum, {} key updates",
        d.handshakes_noise, d.handshakes_post_quantum, d.key_updates
    );
    print_list("Listen addresses:", s.listen_addrs.iter());
    print_list("External addresses:", s.external_addrs.iter());
    print_list(
        "Relay reservations:",
        s.relay_reservations.iter().map(|r| match &r.address {
            Some(a) => format!("{} (reachable at {a})", r.relay),
            None => format!("{} (pending)", r.relay),
        }),
    );
    Ok(())
}

fn print_list<T: std::fmt::Display>(title: &str, items: impl Iterator<Item = T>) {
    println!("{title}");
    let mut any = false;
    for item in items {
        any = true;
        println!("  {item}");
    }
    if !any {
        println!("  (none)");
    }
}

pub fn peers(peers: &[PeerInfo], as_json: bool) -> anyhow::Result<()> {
    let rows = peers.iter().flat_map(|p| {
        p.connections.iter().map(|c| {
            vec![
                p.peer_id.to_string(),
                match c.direction {
                    Direction::Outbound => "out".into(),
                    Direction::Inbound => "in".into(),
                },
                if c.relayed { "relayed" } else { "direct" }.into(),
                p.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                p.agent_version.clone().unwrap_or_else(|| "-".into()),
                c.remote_addr.to_string(),
            ]
        })
    });
    let header = ["PEER", "DIR", "KIND", "RTT", "AGENT", "ADDRESS"];
    listing(&peers, as_json, &header, rows, "No connected peers.")
}

pub fn found(f: &FoundPeer, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(f);
    }
    let how = match f.source {
        crate::node::FindSource::Connected => "already connected".to_string(),
        crate::node::FindSource::Dht => format!("DHT lookup, {} ms", f.duration_ms),
        crate::node::FindSource::Presence => {
            format!("signed presence record, {} ms", f.duration_ms)
        }
    };
    print_list(&format!("{} ({how}):", f.peer_id), f.addrs.iter());
    Ok(())
}

pub fn connected(c: &Connected, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(c);
    }
    if c.already_connected {
        println!("Already connected to {} at {}", c.peer_id, c.remote_addr);
    } else {
        println!("Connected to {} at {}", c.peer_id, c.remote_addr);
    }
    Ok(())
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[c]);
            }
        }
    }
    out
}

/// A unix time in milliseconds as RFC 3339 UTC (`2023-11-14T22:13:20Z`).
pub fn time_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONG".into(), "x".into()],
            vec!["abc".to_string(), "b".into(), "yy".into()],
        ];
        assert_eq!(table(&rows), "A    LONG  x\nabc  b     yy\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m 5s");
        assert_eq!(duration(7260), "2h 1m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}

/// `commucat doctor --json`: one object, `ok` true or false.
#[derive(Serialize)]
struct Doctor<'a> {
    ok: bool,
    data_dir: &'a std::path::Path,
    generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_generation: Option<u64>,
    counts: crate::store::Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_loss_accepted: Option<&'a crate::store::commit::Accepted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

pub fn doctor_ok(
    dir: &std::path::Path,
    check: &crate::store::Check,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        return json(&Doctor {
            ok: true,
            data_dir: dir,
            generation: check.generation,
            recorded_generation: check.recorded.map(|r| r.generation),
            counts: check.counts,
            data_loss_accepted: check.accepted.as_ref(),
            problem: None,
        });
    }
    println!("Data directory:  {}", dir.display());
    match check.recorded {
        Some(r) => println!(
            "Database:        ok: it holds commit {} (the last recorded one is {})",
            check.generation, r.generation
        ),
        None => println!(
            "Database:        ok (no commit record yet: the node writes one when it starts)"
        ),
    }
    println!("Holds:           {}", check.counts);
    if let Some(a) = &check.accepted {
        println!(
            "Note:            a start on {} accepted lost data (commit {} of {}){}",
            crate::time::rfc3339(a.at_ms / 1000),
            a.found_generation,
            a.expected_generation,
            a.kept
                .as_ref()
                .map(|k| format!("; the damaged files are in {}", k.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub fn doctor_loss(loss: &crate::store::Loss, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(&Doctor {
            ok: false,
            data_dir: loss.db_dir.parent().unwrap_or(&loss.db_dir),
            generation: loss.found_generation,
            recorded_generation: loss.expected.map(|r| r.generation),
            counts: loss.now,
            data_loss_accepted: None,
            problem: Some(loss.to_string()),
        });
    }
    println!("{loss}");
    Ok(())
}

/// `s` as one path segment of a control API URL.
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `text` as a QR code drawn with Unicode half blocks, for a terminal (dark on light, with the
/// quiet zone the standard asks for).
pub fn qr(text: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::new(text.as_bytes())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}
