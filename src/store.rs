//! Persistent node state in one sled database under the data directory.
//!
//! Trees: `peerbook` (known peers and their addresses, see [`peerbook`]). Later capabilities add
//! the outbox, inbox, transfers and DHT records as trees of the same database.

pub mod peerbook;

use std::path::{Path, PathBuf};

pub use peerbook::PeerBook;

/// Sub-directory of the data directory that holds the database.
pub const DB_DIR: &str = "db";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the data directory {0} is in use by another commucat process")]
    Locked(PathBuf),
    #[error("database at {path}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
}

/// Handle to the node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the database in `data_dir/db` with a page cache of `cache_mib` MiB.
    pub fn open(data_dir: &Path, cache_mib: u64) -> Result<Self, Error> {
        let path = data_dir.join(DB_DIR);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_mib.saturating_mul(1024 * 1024))
            .open()
            .map_err(|source| match &source {
                // sled reports a held file lock as an I/O error with this text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    Error::Locked(data_dir.to_owned())
                }
                _ => Error::Db { path, source },
            })?;
        Ok(Self { db })
    }

    /// A database that lives in memory and vanishes on drop (tests, in-process simulation).
    pub fn temporary() -> Result<Self, Error> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        Ok(Self { db })
    }

    pub fn peer_book(&self, limits: peerbook::Limits) -> Result<PeerBook, Error> {
        Ok(PeerBook::new(self.db.open_tree(peerbook::TREE)?, limits))
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await?;
        Ok(())
    }
}
