//! `commucat name claim | release | resolve` (`/v1/names`, `protocols/names-v1.md`). Wherever else a
//! peer is named, an `@handle` or a contact's label goes to the node as typed, which resolves it.

use std::path::Path;

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
