//! `commucat run`: open the data directory, assemble the node ([`crate::daemon`]) with its control API,
//! and shut it down in order (control files removed, sled flushed) on Ctrl-C or SIGTERM.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
    crypto::LocalKeys,
    daemon, fsutil,
    identity::Identity,
    store::{self, Store},
};

pub async fn run(data_dir: &Path, cfg: Config, accept_data_loss: bool) -> anyhow::Result<()> {
    // Every connection and signaling session is a file descriptor; the soft limit (often 1024) is
    // raised to the hard one, as servers do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    fsutil::create_private_dir(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let (identity, created) = Identity::load_or_create(data_dir)?;
    if created {
        tracing::info!(peer = %identity.peer_id(), dir = %data_dir.display(), "created a new identity");
    }
    let keys = Arc::new(LocalKeys::load_or_create(
        data_dir,
        identity,
        cfg.data.key_schedule(),
    )?);
    let store = Store::open(
        data_dir,
        store::Options {
            cache_mib: cfg.storage.cache_mib,
            accept_data_loss,
        },
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.control.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the control API on {}",
                cfg.control.listen
            )
        })?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;

    let role = cfg.role;
    let app = daemon::Builder::new(cfg, keys.clone(), store)
        .data_dir(data_dir)
        .control(listener)
        .spawn()
        .await?;
    tracing::info!(peer = %keys.peer_id(), %role, "node started");
    if let Some(addr) = app.control_addr() {
        tracing::info!(%addr, "control API listening");
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot wait for Ctrl-C");
            }
        }
        _ = sigterm.recv() => {}
    }
    tracing::info!("shutting down");
    app.shutdown().await.context("flushing the database")?;
    tracing::info!("stopped");
    Ok(())
}
