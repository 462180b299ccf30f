//! File transfers in both directions (`protocols/data-v1.md` §6): what is being sent to whom and how
//! far it got, and what is being received with the bitmap of blocks already written (for resume).

use std::{marker::PhantomData, path::PathBuf};

use libp2p::PeerId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::Error;

pub const OUT_TREE: &str = "transfers_out";
pub const IN_TREE: &str = "transfers_in";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for a session with the peer.
    Queued,
    /// Blocks are moving.
    Active,
    /// Every block written at the receiver and the hash checked.
    Complete,
    /// Given up: see `error`.
    Failed,
}

impl State {
    pub fn is_finished(self) -> bool {
        matches!(self, State::Complete | State::Failed)
    }
}

/// RaptorQ and block layout of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub size: u64,
    pub block_size: u32,
    pub symbol_size: u16,
    pub repair_per_mille: u16,
}

impl Layout {
    pub fn blocks(&self) -> u32 {
        u32::try_from(self.size.div_ceil(u64::from(self.block_size))).unwrap_or(u32::MAX)
    }

    /// Length of block `i` (the last one may be short).
    pub fn block_len(&self, i: u32) -> u64 {
        let start = u64::from(i) * u64::from(self.block_size);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.block_size))
    }
}

/// What both directions record of a transfer: the file, and how far it got. (Flattened into
/// [`Outgoing`] and [`Incoming`]: their JSON has these keys at the top level.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferFile {
    /// The file name (the receiver's is sanitised).
    pub name: String,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    #[serde(flatten)]
    pub layout: Layout,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub blocks_total: u32,
    /// Blocks durably written at the receiver (as the receiver reported them, for the sender).
    pub blocks_done: u32,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
}

impl TransferFile {
    /// A transfer of `name` starting now in `state`, with no block done.
    pub fn new(name: String, sha256: [u8; 32], layout: Layout, state: State) -> Self {
        Self {
            name,
            sha256: hex::encode(sha256),
            layout,
            state,
            error: None,
            blocks_total: layout.blocks(),
            blocks_done: 0,
            created_at_ms: crate::time::unix_ms(),
            completed_at_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// 16 random bytes, hex.
    pub id: String,
    pub to: PeerId,
    pub path: PathBuf,
    #[serde(flatten)]
    pub file: TransferFile,
    /// FILE_CHUNK payload bytes sent for this transfer, over all sessions.
    pub bytes_sent: u64,
    /// Sessions that carried this transfer (more than 1: it was resumed).
    pub sessions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub id: String,
    pub from: PeerId,
    #[serde(flatten)]
    pub file: TransferFile,
    /// Bit i set: block i is durably written (FILE_STATUS bitmap), hex.
    pub bitmap: String,
    pub partial_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_path: Option<PathBuf>,
}

pub struct Transfers {
    out: Records<Outgoing>,
    inc: Records<Incoming>,
}

impl Transfers {
    pub(super) fn open(db: &super::Trees) -> Result<Self, Error> {
        Ok(Self {
            out: Records::open(db, OUT_TREE)?,
            inc: Records::open(db, IN_TREE)?,
        })
    }

    /// Files this node sends.
    pub fn outgoing(&self) -> &Records<Outgoing> {
        &self.out
    }

    /// Files this node receives.
    pub fn incoming(&self) -> &Records<Incoming> {
        &self.inc
    }

    /// Unfinished outgoing transfers to `to`, oldest first.
    pub fn pending_to(&self, to: &PeerId) -> Result<Vec<Outgoing>, Error> {
        Ok(self
            .out
            .all()?
            .into_iter()
            .filter(|t| t.to == *to && !t.file.state.is_finished())
            .collect())
    }
}

/// A transfer record: stored by its id, listed by age.
pub trait Record: Serialize + DeserializeOwned {
    fn id(&self) -> &str;
    fn created_at_ms(&self) -> u64;
}

impl Record for Outgoing {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at_ms(&self) -> u64 {
        self.file.created_at_ms
    }
}

impl Record for Incoming {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at_ms(&self) -> u64 {
        self.file.created_at_ms
    }
}

/// One tree of transfer records, JSON by transfer id.
pub struct Records<T> {
    tree: sled::Tree,
    records: PhantomData<fn() -> T>,
}

impl<T: Record> Records<T> {
    fn open(db: &super::Trees, name: &str) -> Result<Self, Error> {
        Ok(Self {
            tree: db.open_tree(name)?,
            records: PhantomData,
        })
    }

    /// Stores `t` in place of the record with its id.
    pub fn put(&self, t: &T) -> Result<(), Error> {
        self.tree.insert(
            t.id().as_bytes(),
            serde_json::to_vec(t).expect("serialises"),
        )?;
        Ok(())
    }

    /// One record; an unreadable one (written by another version) counts as absent.
    pub fn get(&self, id: &str) -> Result<Option<T>, Error> {
        Ok(self
            .tree
            .get(id.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every readable record, oldest first.
    pub fn all(&self) -> Result<Vec<T>, Error> {
        let mut v = Vec::new();
        for item in self.tree.iter() {
            let (_, bytes) = item?;
            if let Ok(t) = serde_json::from_slice(&bytes) {
                v.push(t);
            }
        }
        v.sort_by_key(T::created_at_ms);
        Ok(v)
    }
}
