//! `commucat run`: open the data directory, start the node and the control API, and shut both
//! down cleanly (sled flushed, control files removed) on Ctrl-C or SIGTERM.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    assist,
    config::Config,
    control,
    crypto::LocalKeys,
    data, fsutil,
    identity::Identity,
    node::{Node, Transport},
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
    let control_addr = listener.local_addr()?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;

    let node = Node::spawn(&cfg, keys.clone(), &store, Transport::Network).await?;
    tracing::info!(peer = %keys.peer_id(), role = %cfg.role, "node started");
    let downloads = cfg
        .data
        .downloads_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("downloads"));
    std::fs::create_dir_all(&downloads).with_context(|| {
        format!(
            "cannot create the downloads directory {}",
            downloads.display()
        )
    })?;
    let data = Arc::new(data::Service::start(
        &node,
        keys.clone(),
        &store,
        &cfg.data,
        downloads,
    )?);

    let tokens = Arc::new(assist::Tokens::new(
        store.assist_tokens()?,
        store.committer(),
        &cfg.assist.token_hashes,
    ));
    let cfg = Arc::new(cfg);
    let assist = if cfg.assist.enabled {
        Some(
            assist::Assist::start(
                cfg.clone(),
                &node,
                data.clone(),
                keys.clone(),
                tokens.clone(),
            )
            .await?,
        )
    } else {
        None
    };

    let token = control::Token::generate();
    let shutdown = CancellationToken::new();
    let router = control::router(
        control::Parts {
            node: node.client().clone(),
            data: data.clone(),
            binding: keys.identity.binding().clone(),
            assist_tokens: tokens,
            metrics: node.metrics(),
        },
        token.clone(),
        shutdown.clone(),
    );
    let server = tokio::spawn(control::serve(listener, router, shutdown.clone()));
    let written = control::write_files(data_dir, control_addr, &token)
        .and_then(|()| match &assist {
            Some(a) => assist::write_files(data_dir, a),
            None => Ok(()),
        })
        .with_context(|| format!("cannot write the control files in {}", data_dir.display()));
    if written.is_ok() {
        tracing::info!(addr = %control_addr, "control API listening");
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot wait for Ctrl-C");
                }
            }
            _ = sigterm.recv() => {}
        }
        tracing::info!("shutting down");
    }

    control::remove_files(data_dir);
    assist::remove_files(data_dir);
    shutdown.cancel();
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "control API server error"),
        Err(e) => tracing::warn!(error = %e, "control API task failed"),
        Ok(Ok(())) => {}
    }
    if let Some(assist) = assist {
        assist.shutdown().await;
    }
    data.shutdown().await;
    node.shutdown().await;
    store.close().await.context("flushing the database")?;
    tracing::info!("stopped");
    written
}
