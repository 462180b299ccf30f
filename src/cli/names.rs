//! `commucat name claim | release | resolve`, and `@handle` wherever a peer is named: resolved
//! through the running node (`GET /v1/names/{handle}`, `protocols/names-v1.md`).

use std::{path::Path, str::FromStr};

use libp2p::PeerId;

use super::output::json;
use crate::{
    control::{
        self,
        names::{ClaimName, Claimed},
        routes,
    },
    names::Handle,
    node::ResolvedName,
};

/// A peer as a person names it on the command line: a PeerId, or `@handle`.
#[derive(Debug, Clone)]
pub enum Target {
    Peer(PeerId),
    Name(Handle),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('@') {
            return Handle::parse(s)
                .map(Target::Name)
                .map_err(|e| e.to_string());
        }
        s.parse()
            .map(Target::Peer)
            .map_err(|_| format!("`{s}` is neither a peer id nor an @handle"))
    }
}

impl Target {
    /// The PeerId, looking a name up through the node at `dir`.
    pub async fn peer_id(&self, dir: &Path) -> anyhow::Result<PeerId> {
        match self {
            Target::Peer(p) => Ok(*p),
            Target::Name(h) => Ok(lookup(dir, h).await?.peer_id),
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
