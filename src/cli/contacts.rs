//! `commucat contact add | list | remove | verify`: the address book of the running node
//! (`/v1/contacts`, `protocols/contacts-v1.md`).

use std::path::Path;

use clap::Subcommand;

use super::{
    Output,
    output::{json, listing, path_segment, qr},
};
use crate::{
    control::{
        self,
        contacts::{AddContact, ContactInfo, Recipient, SafetyNumber},
        routes,
    },
    store::contacts::{Label, Trust},
};

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Add a contact: its keys are looked up now and pinned.
    Add {
        /// Your name for it (not an @handle, not a peer id).
        label: Label,
        /// Peer id or @handle.
        #[arg(value_name = "PEER")]
        peer: Recipient,
        #[command(flatten)]
        output: Output,
    },
    /// Contacts, with whether their keys are verified, unverified or changed.
    List(Output),
    /// Remove a contact.
    Remove {
        label: Label,
        #[command(flatten)]
        output: Output,
    },
    /// Show the safety number to compare with the contact (digits and a QR code).
    Verify {
        label: Label,
        /// The numbers match: mark the contact verified (and accept its new keys if they changed).
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        output: Output,
    },
}

pub(super) async fn run(dir: &Path, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Add {
            label,
            peer,
            output,
        } => add(dir, label, peer, output.json).await,
        Command::List(out) => list(dir, out.json).await,
        Command::Remove { label, output } => remove(dir, label, output.json).await,
        Command::Verify {
            label,
            confirm,
            output,
        } => verify(dir, label, confirm, output.json).await,
    }
}

fn path(label: &Label, then: &str) -> String {
    format!(
        "{}/{}{then}",
        routes::CONTACTS,
        path_segment(label.as_str())
    )
}

fn trust(t: Trust) -> &'static str {
    match t {
        Trust::Verified => "verified",
        Trust::Unverified => "unverified",
        Trust::KeyChanged => "KEY CHANGED",
    }
}

pub async fn add(dir: &Path, label: Label, peer: Recipient, as_json: bool) -> anyhow::Result<()> {
    let c: ContactInfo = control::Client::for_data_dir(dir)?
        .post(routes::CONTACTS, &AddContact { label, peer })
        .await?;
    if as_json {
        return json(&c);
    }
    println!(
        "Added {} ({}); its keys are pinned. Compare safety numbers with `commucat contact verify {}`",
        c.label, c.peer_id, c.label
    );
    Ok(())
}

pub async fn list(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let all: Vec<ContactInfo> = control::Client::for_data_dir(dir)?
        .get(routes::CONTACTS)
        .await?;
    let rows = all.iter().map(|c| {
        vec![
            c.label.to_string(),
            c.handle
                .as_ref()
                .map_or_else(|| "-".to_owned(), |h| format!("@{h}")),
            c.peer_id.to_string(),
            trust(c.trust).to_owned(),
        ]
    });
    listing(
        &all,
        as_json,
        &["LABEL", "HANDLE", "PEER", "KEYS"],
        rows,
        "No contacts; add one with `commucat contact add <label> <peer-id | @handle>`",
    )
}

pub async fn remove(dir: &Path, label: Label, as_json: bool) -> anyhow::Result<()> {
    control::Client::for_data_dir(dir)?
        .delete(&path(&label, ""))
        .await?;
    if as_json {
        return json(&serde_json::json!({ "removed": label }));
    }
    eprintln!("Removed {label}");
    Ok(())
}

pub async fn verify(dir: &Path, label: Label, confirm: bool, as_json: bool) -> anyhow::Result<()> {
    let client = control::Client::for_data_dir(dir)?;
    let n: SafetyNumber = client.get(&path(&label, "/safety-number")).await?;
    let confirmed: Option<ContactInfo> = if confirm {
        Some(client.post(&path(&label, "/confirm"), &()).await?)
    } else {
        None
    };
    if as_json {
        return json(&serde_json::json!({ "safety_number": n, "confirmed": confirmed }));
    }
    if n.trust == Trust::KeyChanged {
        println!(
            "The keys of {} CHANGED: this is the safety number with its new keys ({}).",
            n.label, n.peer_id
        );
    }
    println!("Safety number with {}:\n", n.label);
    for line in n.safety_number.split(' ').collect::<Vec<_>>().chunks(4) {
        println!("    {}", line.join(" "));
    }
    println!("\n{}", qr(&n.safety_number)?);
    match confirmed {
        Some(c) => println!("{} is now verified ({}).", c.label, c.peer_id),
        None => println!(
            "Compare it with the one {} sees, in person or over a call. If they match, run \
             `commucat contact verify {} --confirm`.",
            n.label, n.label
        ),
    }
    Ok(())
}
