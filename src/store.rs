//! Persistent node state in one sled database under the data directory.
//!
//! Trees: `peerbook` (known peers, [`peerbook`]), `outbox` / `inbox` (messages, [`outbox`],
//! [`inbox`]), `transfers_*` ([`transfers`]), `bundles` (verified key bundles of peers, for IK
//! handshakes) and `meta` (small counters: the outbox epoch, the presence record sequence number).

pub mod inbox;
pub mod outbox;
pub mod peerbook;
pub mod transfers;

use std::path::{Path, PathBuf};

pub use inbox::Inbox;
use libp2p::PeerId;
pub use outbox::Outbox;
pub use peerbook::PeerBook;
pub use transfers::Transfers;

/// Small values: outbox epoch, presence sequence number.
pub const META_TREE: &str = "meta";
/// Verified key bundles of peers, by PeerId.
pub const BUNDLES_TREE: &str = "bundles";

/// Assist-mode bearer tokens issued on this node, by SHA-256 of the token.
pub const ASSIST_TOKENS_TREE: &str = "assist_tokens";

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
    #[error("{0} is full (limit {1})")]
    Full(&'static str, usize),
    #[error("database entry is corrupt: {0}")]
    Corrupt(&'static str),
}

pub use crate::data::codec::ClientId;

/// The light clients a message names (`protocols/data-v1.md`, DATA_VIA): the sender's client that
/// wrote it, the receiver's client it is for. Client ids are 16 hex digits.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Via {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_client: Option<String>,
}

impl Via {
    /// The ids as DATA_VIA carries them; `None` for an id that is not 16 hex digits.
    pub fn ids(&self) -> Option<(Option<ClientId>, Option<ClientId>)> {
        let parse = |id: &Option<String>| match id {
            None => Some(None),
            Some(h) => crate::identity::hex_array::<8>(h).ok().map(Some),
        };
        Some((parse(&self.from_client)?, parse(&self.to_client)?))
    }

    pub fn from_ids(from_client: Option<ClientId>, to_client: Option<ClientId>) -> Self {
        Self {
            from_client: from_client.map(hex::encode),
            to_client: to_client.map(hex::encode),
        }
    }
}

/// A PeerId as a key prefix: length byte, then the bytes (no PeerId is a prefix of another).
pub fn peer_key(peer: &PeerId) -> Vec<u8> {
    let b = peer.to_bytes();
    let mut k = Vec::with_capacity(1 + b.len() + 8);
    k.push(u8::try_from(b.len()).expect("peer ids are short"));
    k.extend_from_slice(&b);
    k
}

/// Handle to the node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    inbox_notify: tokio::sync::broadcast::Sender<inbox::Message>,
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
        Ok(Self::new(db))
    }

    fn new(db: sled::Db) -> Self {
        Self {
            db,
            inbox_notify: tokio::sync::broadcast::channel(inbox::NOTIFY_BUFFER).0,
        }
    }

    /// A database that lives in memory and vanishes on drop (tests, in-process simulation).
    pub fn temporary() -> Result<Self, Error> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        Ok(Self::new(db))
    }

    pub fn peer_book(&self, limits: peerbook::Limits) -> Result<PeerBook, Error> {
        Ok(PeerBook::new(self.db.open_tree(peerbook::TREE)?, limits))
    }

    pub fn outbox(&self) -> Result<Outbox, Error> {
        Outbox::open(&self.db)
    }

    pub fn inbox(&self) -> Result<Inbox, Error> {
        Inbox::open(&self.db, self.inbox_notify.clone())
    }

    pub fn transfers(&self) -> Result<Transfers, Error> {
        Transfers::open(&self.db)
    }

    pub fn bundles(&self) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(BUNDLES_TREE)?)
    }

    pub fn assist_tokens(&self) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(ASSIST_TOKENS_TREE)?)
    }

    pub fn meta(&self) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(META_TREE)?)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await?;
        Ok(())
    }
}
