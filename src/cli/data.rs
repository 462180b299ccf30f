//! CLI verbs of the data protocol: `send`, `outbox`, `inbox`, `send-file`, `transfers`.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use futures::StreamExt;
use libp2p::PeerId;

use super::output::{json, listing, time_ms};
use crate::{
    control::{
        self,
        contacts::Recipient,
        data::{SendFile, SendMessage, Transfer, TransferList},
        routes,
    },
    store::{inbox, outbox, transfers},
};

/// How often `send-file` asks for progress.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

pub async fn send(
    dir: &Path,
    to: Recipient,
    body: String,
    light_client: Option<crate::wire::ClientId>,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = control::Client::for_data_dir(dir)?;
    let m: outbox::Message = client
        .post(
            routes::MESSAGES,
            &SendMessage {
                to,
                body,
                client: light_client,
            },
        )
        .await?;
    if as_json {
        return json(&m);
    }
    println!("Queued message {} for {} (#{})", m.id, m.to, m.seq);
    Ok(())
}

pub async fn outbox(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let entries: Vec<outbox::Entry> = control::Client::for_data_dir(dir)?
        .get(routes::OUTBOX)
        .await?;
    let rows = entries.iter().map(|e| {
        vec![
            match e.state {
                outbox::State::Queued => "queued".into(),
                outbox::State::Delivered => "delivered".into(),
            },
            e.message.to.to_string(),
            e.message.seq.to_string(),
            time_ms(e.message.created_at_ms),
            e.message.id.clone(),
            preview(&e.message.body),
        ]
    });
    let header = ["STATE", "TO", "#", "QUEUED", "ID", "TEXT"];
    listing(&entries, as_json, &header, rows, "The outbox is empty.")
}

fn preview(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn print_message(m: &inbox::Message) {
    // A light client's message shows as `client <id> via <node>`; one for a light client of ours
    // as `… -> client <id>`.
    let from = match &m.via.from_client {
        Some(c) => format!("client {c} via {}", m.from),
        None => m.from.to_string(),
    };
    let to = match (&m.via.to_client, &m.group) {
        (Some(c), _) => format!(" -> client {c}"),
        (None, Some(g)) => format!(" in group {} (#{})", hex::encode(g.group), g.sender_seq),
        (None, None) => String::new(),
    };
    println!("[{}] {from}{to}: {}", time_ms(m.received_at_ms), m.body);
}

pub async fn inbox(
    dir: &Path,
    after: u64,
    follow: bool,
    group: Option<String>,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = control::Client::for_data_dir(dir)?;
    // A group named by name becomes its id; messages of other groups (and none) are left out.
    let only = match group.map(|g| (g.parse::<crate::groups::GroupId>(), g)) {
        None => None,
        Some((Ok(id), _)) => Some(id.0),
        Some((Err(_), name)) => {
            let path = format!("{}/{}", routes::GROUPS, super::output::path_segment(&name));
            let info: crate::data::groups::GroupInfo = client.get(&path).await?;
            Some(info.id.0)
        }
    };
    let shown = |m: &inbox::Message| only.is_none_or(|g| m.group.is_some_and(|t| t.group == g));
    if !follow {
        let mut msgs: Vec<inbox::Message> = client
            .get(&format!("{}?after={after}", routes::INBOX))
            .await?;
        msgs.retain(|m| shown(m));
        if as_json {
            return json(&msgs);
        }
        if msgs.is_empty() {
            println!("No messages.");
        }
        msgs.iter().for_each(print_message);
        return Ok(());
    }
    let mut events = Box::pin(
        client
            .events(&format!("{}?after={after}", routes::INBOX_STREAM))
            .await?,
    );
    while let Some(ev) = events.next().await {
        let (kind, data) = ev?;
        if kind != "message" {
            continue;
        }
        let m: inbox::Message = serde_json::from_str(&data).context("malformed inbox event")?;
        if !shown(&m) {
            continue;
        }
        if as_json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            print_message(&m);
        }
    }
    Ok(())
}

pub async fn send_file(
    dir: &Path,
    to: Recipient,
    path: &Path,
    wait: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let client = control::Client::for_data_dir(dir)?;
    let t: transfers::Outgoing = client.post(routes::FILES, &SendFile { to, path }).await?;
    if !wait {
        return if as_json {
            json(&t)
        } else {
            println!(
                "Queued {} ({} bytes) for {} as transfer {}",
                t.file.name, t.file.layout.size, t.to, t.id
            );
            Ok(())
        };
    }
    let bar = (!as_json).then(|| {
        let bar = indicatif::ProgressBar::new(t.file.layout.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(t.file.name.clone());
        bar
    });
    let mut last: Option<(transfers::State, u32)> = None;
    loop {
        let Transfer::Out(now) = client
            .get(&format!("{}/{}", routes::TRANSFERS, t.id))
            .await?
        else {
            bail!("transfer {} is not an outgoing transfer", t.id);
        };
        let key = (now.file.state, now.file.blocks_done);
        if last != Some(key) {
            last = Some(key);
            let confirmed = (u64::from(now.file.blocks_done)
                * u64::from(now.file.layout.block_size))
            .min(now.file.layout.size);
            match &bar {
                Some(b) => b.set_position(confirmed),
                None => println!(
                    "{}",
                    serde_json::json!({
                        "type": "progress",
                        "id": now.id,
                        "state": now.file.state,
                        "blocks_done": now.file.blocks_done,
                        "blocks_total": now.file.blocks_total,
                        "bytes_confirmed": confirmed,
                        "bytes_sent": now.bytes_sent,
                        "sessions": now.sessions,
                    })
                ),
            }
        }
        match now.file.state {
            transfers::State::Complete => {
                if let Some(b) = &bar {
                    b.finish();
                    println!("Delivered {} to {}", now.file.name, now.to);
                }
                return Ok(());
            }
            transfers::State::Failed => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                bail!("transfer failed: {}", now.file.error.unwrap_or_default());
            }
            _ => tokio::time::sleep(PROGRESS_POLL).await,
        }
    }
}

pub async fn transfers(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let list: TransferList = control::Client::for_data_dir(dir)?
        .get(routes::TRANSFERS)
        .await?;
    let row = |dir: &str, f: &transfers::TransferFile, peer: &PeerId, name: String| {
        let state = serde_json::to_value(f.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        vec![
            dir.to_owned(),
            state,
            format!("{}/{}", f.blocks_done, f.blocks_total),
            f.layout.size.to_string(),
            peer.to_string(),
            name,
        ]
    };
    let out = list
        .outgoing
        .iter()
        .map(|t| row("out", &t.file, &t.to, t.file.name.clone()));
    let inc = list.incoming.iter().map(|t| {
        let name = t
            .final_path
            .as_ref()
            .map_or_else(|| t.file.name.clone(), |p| p.display().to_string());
        row("in", &t.file, &t.from, name)
    });
    let header = ["DIR", "STATE", "BLOCKS", "SIZE", "PEER", "NAME"];
    listing(&list, as_json, &header, out.chain(inc), "No transfers.")
}
