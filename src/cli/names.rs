//! `commucat name claim | release | resolve`, and `@handle` or a contact's label wherever a peer is
//! named: resolved through the running node (`GET /v1/names/{handle}`, `protocols/names-v1.md`;
//! `GET /v1/contacts/{label}`).

use std::path::Path;

use libp2p::PeerId;

use super::output::json;
use crate::{
    control::{
        self,
        contacts::{ContactInfo, Recipient},
        names::{ClaimName, Claimed},
        routes,
    },
    names::Handle,
    node::ResolvedName,
};

/// The PeerId of a peer as a person names it: a name is looked up through the node at `dir`, a
/// contact in its address book.
pub async fn peer_id(dir: &Path, to: &Recipient) -> anyhow::Result<PeerId> {
    match to {
        Recipient::Peer(p) => Ok(*p),
        Recipient::Name(h) => Ok(lookup(dir, h).await?.peer_id),
        Recipient::Contact(l) => {
            let path = format!(
                "{}/{}",
                routes::CONTACTS,
                super::output::path_segment(l.as_str())
            );
            let c: ContactInfo = control::Client::for_data_dir(dir)?.get(&path).await?;
            Ok(c.peer_id)
        }
    }
}

async fn lookup(dir: &Path, handle: &Handle) -> anyhow::Result<ResolvedName> {
    let path = format!("{}/{handle}", routes::NAMES);
    Ok(control::Client::for_data_dir(dir)?.get(&path).await?)
}

pub async fn claim(dir: &Path, handle: Handle, as_json: bool) -> anyhow::Result<()> {
    let claimed: Claimed = control::Client::for_data_dir(dir)?
        .post(routes::NAMES, &ClaimName { handle })
        .await?;
    if as_json {
        return json(&claimed);
    }
    println!(
        "Claimed @{} for {}; the node republishes it while it runs",
        claimed.handle, claimed.peer_id
    );
    Ok(())
}

pub async fn release(dir: &Path) -> anyhow::Result<()> {
    control::Client::for_data_dir(dir)?
        .delete(routes::NAMES)
        .await?;
    eprintln!("Released");
    Ok(())
}

pub async fn resolve(dir: &Path, handle: Handle, as_json: bool) -> anyhow::Result<()> {
    let r = lookup(dir, &handle).await?;
    if as_json {
        return json(&r);
    }
    println!(
        "@{} is {} (record #{}, valid until {})",
        r.handle,
        r.peer_id,
        r.seq,
        crate::time::rfc3339(r.expires_at)
    );
    Ok(())
}
