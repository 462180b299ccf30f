//! `commucat pair`, `commucat devices [revoke <id>]`: pairing light clients by code through the
//! running node (`/v1/pairing`, `/v1/devices`, `protocols/pairing-v1.md`).

use std::path::Path;

use super::output::{json, listing, qr};
use crate::{
    assist::pairing::Invitation,
    control::{self, routes},
    store::devices::Device,
    wire::ClientId,
};

pub async fn pair(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let inv: Invitation = control::Client::for_data_dir(dir)?
        .post(routes::PAIRING, &())
        .await?;
    if as_json {
        return json(&inv);
    }
    let minutes = inv
        .expires_at
        .saturating_sub(crate::time::unix_secs())
        .div_ceil(60);
    println!(
        "Pairing code: {}   (for one device, valid {minutes} min, until {})",
        inv.code,
        crate::time::rfc3339(inv.expires_at)
    );
    if let Some(url) = &inv.url {
        println!(
            "\nOn the device, open\n\n    {url}\n\nor scan:\n\n{}",
            qr(url)?
        );
        println!(
            "(or open the light client there and type the code). `commucat devices` lists paired \
             devices."
        );
    }
    Ok(())
}

pub async fn list(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let all: Vec<Device> = control::Client::for_data_dir(dir)?
        .get(routes::DEVICES)
        .await?;
    let rows = all.iter().map(|d| {
        vec![
            d.id.to_string(),
            d.name.clone().unwrap_or_else(|| "-".into()),
            crate::time::rfc3339(d.paired_at),
            crate::time::rfc3339(d.expires_at),
            d.invited_by
                .map_or_else(|| "owner".into(), |c| format!("device {c}")),
        ]
    });
    listing(
        &all,
        as_json,
        &["DEVICE", "NAME", "PAIRED", "EXPIRES", "INVITED BY"],
        rows,
        "No paired devices; pair one with `commucat pair`",
    )
}

pub async fn revoke(dir: &Path, id: ClientId, as_json: bool) -> anyhow::Result<()> {
    control::Client::for_data_dir(dir)?
        .delete(&format!("{}/{id}", routes::DEVICES))
        .await?;
    if as_json {
        return json(&serde_json::json!({ "revoked": id }));
    }
    eprintln!("Unpaired {id}: its token is revoked and its sessions are closed");
    Ok(())
}
