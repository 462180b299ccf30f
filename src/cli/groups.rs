//! `commucat group …`: groups of peers through the running node (`/v1/groups`,
//! `protocols/groups-v1.md`). A group is named by its id or, when no other has it, its name.

use std::path::Path;

use clap::Subcommand;

use super::{
    Output,
    output::{json, listing, path_segment},
};
use crate::{
    control::{
        self,
        contacts::Recipient,
        groups::{CreateGroup, GroupFile, GroupMessage, GroupSent, MemberRequest},
        routes,
    },
    data::groups::GroupInfo,
};

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Make a group; this node is its first member and admin.
    Create {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Add a member (admins only).
    Add {
        /// Group id or name.
        group: String,
        /// Peer id, @handle or contact label.
        #[arg(value_name = "PEER")]
        peer: Recipient,
        #[command(flatten)]
        output: Output,
    },
    /// Remove a member (admins only).
    Remove {
        group: String,
        #[arg(value_name = "PEER")]
        peer: Recipient,
        #[command(flatten)]
        output: Output,
    },
    /// Make a member an admin (admins only).
    Admin {
        group: String,
        #[arg(value_name = "PEER")]
        peer: Recipient,
        #[command(flatten)]
        output: Output,
    },
    /// Leave a group.
    Leave {
        group: String,
        #[command(flatten)]
        output: Output,
    },
    /// A group's members and admins.
    Members {
        group: String,
        #[command(flatten)]
        output: Output,
    },
    /// The groups this node is in.
    List(Output),
    /// Send a file to every other member (once each, resumable; `transfers` shows progress).
    SendFile {
        group: String,
        path: std::path::PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Send a message to every other member (each copy delivered exactly once, also to members
    /// offline now).
    Send {
        group: String,
        text: String,
        #[command(flatten)]
        output: Output,
    },
}

fn path(group: &str, then: &str) -> String {
    format!("{}/{}{then}", routes::GROUPS, path_segment(group))
}

fn show(g: &GroupInfo, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(g);
    }
    println!(
        "{} ({}): {} members, log of {} entries",
        g.name,
        g.id,
        g.members.len(),
        g.entries
    );
    for m in &g.members {
        let admin = if g.admins.contains(m) { " (admin)" } else { "" };
        println!("  {m}{admin}");
    }
    Ok(())
}

pub(super) async fn run(dir: &Path, command: Command) -> anyhow::Result<()> {
    let client = control::Client::for_data_dir(dir)?;
    let (info, out): (GroupInfo, Output) = match command {
        Command::Create { name, output } => (
            client.post(routes::GROUPS, &CreateGroup { name }).await?,
            output,
        ),
        Command::Add {
            group,
            peer,
            output,
        } => (
            client
                .post(&path(&group, "/members"), &MemberRequest { peer })
                .await?,
            output,
        ),
        Command::Admin {
            group,
            peer,
            output,
        } => (
            client
                .post(&path(&group, "/admins"), &MemberRequest { peer })
                .await?,
            output,
        ),
        Command::Remove {
            group,
            peer,
            output,
        } => {
            let member = format!("/members/{}", path_segment(&peer.to_string()));
            (client.delete_json(&path(&group, &member)).await?, output)
        }
        Command::Leave { group, output } => {
            (client.post(&path(&group, "/leave"), &()).await?, output)
        }
        Command::Members { group, output } => (client.get(&path(&group, "")).await?, output),
        Command::List(out) => {
            let all: Vec<GroupInfo> = client.get(routes::GROUPS).await?;
            let rows = all.iter().map(|g| {
                vec![
                    g.id.to_string(),
                    g.name.clone(),
                    g.members.len().to_string(),
                    g.entries.to_string(),
                ]
            });
            return listing(
                &all,
                out.json,
                &["GROUP", "NAME", "MEMBERS", "LOG"],
                rows,
                "No groups; make one with `commucat group create <name>`",
            );
        }
        Command::SendFile {
            group,
            path: file,
            output,
        } => {
            let file = file
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let sent: Vec<crate::store::transfers::Outgoing> = client
                .post(&path(&group, "/files"), &GroupFile { path: file })
                .await?;
            if output.json {
                return json(&sent);
            }
            println!(
                "Queued the file for {} other members (see `commucat transfers`)",
                sent.len()
            );
            return Ok(());
        }
        Command::Send {
            group,
            text,
            output,
        } => {
            let sent: GroupSent = client
                .post(&path(&group, "/messages"), &GroupMessage { body: text })
                .await?;
            if output.json {
                return json(&sent);
            }
            println!(
                "Queued message #{} for {} other members of {}",
                sent.sender_seq,
                sent.copies.len(),
                sent.group
            );
            return Ok(());
        }
    };
    show(&info, out.json)
}
