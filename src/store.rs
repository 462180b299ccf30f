//! Persistent node state in one sled database under the data directory, and the check that it
//! still holds everything it committed ([`commit`], `protocols/store-v1.md`). Stores in memory
//! ([`Store::temporary`]) are for tests and simulation; simulated nodes share a database, each
//! under its own tree names ([`Store::temporary_in`], [`SharedTemporary`]).
//!
//! Trees: `peerbook` (known peers, [`peerbook`]), `outbox` / `inbox` (messages, [`outbox`],
//! [`inbox`]), `transfers_*` ([`transfers`]), `bundles` (verified key bundles of peers, for IK
//! handshakes, [`Bundles`]), `contacts` / `contact_peers` (the address book and its index by
//! peer, [`contacts`]), `devices` (paired light clients, [`devices`]), `group_entries` /
//! `group_seqs` ([`groups`]), `assist_tokens` (handed to `assist::tokens`) and `meta` (small
//! counters: the outbox epoch, the presence record sequence number ([`PresenceSeq`]), the commit
//! generation).

pub mod commit;
pub mod contacts;
pub mod devices;
pub mod groups;
pub mod inbox;
pub mod node_state;
pub mod outbox;
pub mod peerbook;
pub mod transfers;
mod trees;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use commit::{Committer, Loss};
pub use contacts::Contacts;
pub use devices::Devices;
pub use groups::GroupLogs;
pub use inbox::Inbox;
use libp2p::PeerId;
pub use node_state::{Bundles, NameClaim, PresenceSeq, Sequence};
pub use outbox::Outbox;
pub use peerbook::PeerBook;
pub use transfers::Transfers;
use trees::Trees;
pub use trees::{Counts, SharedTemporary};

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
    #[error("{0}")]
    DataLoss(Box<Loss>),
    #[error(
        "{0} is unreadable (neither of its two records checks out), so whether the database lost \
         committed state cannot be told; `commucat run --accept-data-loss` starts anyway"
    )]
    CommitRecord(PathBuf),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl Error {
    fn file(path: &Path, source: std::io::Error) -> Self {
        Error::File {
            path: path.to_owned(),
            source,
        }
    }
}

/// How [`Store::open`] opens a data directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[storage]` section.
pub struct Config {
    /// sled page-cache size in MiB.
    pub cache_mib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { cache_mib: 64 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// sled's page cache, MiB.
    pub cache_mib: u64,
    /// Start even if the database lost committed state (`commucat run --accept-data-loss`): the
    /// damaged files are kept beside it, and the inbox asks senders to send again what it lost.
    pub accept_data_loss: bool,
}

impl Options {
    /// Refuse lost data, with a page cache of `cache_mib` MiB.
    pub const fn cache(cache_mib: u64) -> Self {
        Self {
            cache_mib,
            accept_data_loss: false,
        }
    }
}

pub use crate::wire::{ClientId, Via};

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
    db: Trees,
    committer: Committer,
    /// The data directory, for a database on disk.
    data_dir: Option<PathBuf>,
    inbox_notify: crate::broadcast::Broadcast<inbox::Message>,
}

impl Store {
    /// Opens (or creates) the database in `data_dir/db` and checks it against the commit record
    /// (`data_dir/db.commit`): a database that lost committed state is refused with
    /// [`Error::DataLoss`], its files left exactly as they were found, unless
    /// `opts.accept_data_loss`.
    pub fn open(data_dir: &Path, opts: Options) -> Result<Self, Error> {
        let path = data_dir.join(DB_DIR);
        let record = match commit::read_record(data_dir) {
            Err(Error::CommitRecord(_)) if opts.accept_data_loss => None,
            other => other?,
        };
        let clean = commit::read_clean(data_dir);
        // Files that are not as a clean stop left them are copied before sled's recovery can
        // rewrite them, so that a refused start leaves them untouched.
        let unchanged = clean
            .as_ref()
            .is_some_and(|c| commit::stamps(&path).is_ok_and(|now| now == c.files));
        let pre_open = data_dir.join(commit::PRE_OPEN_DIR);
        let existed = path.exists();
        let copied = if record.is_some() && existed && !unchanged {
            check_unlocked(data_dir, &path)?;
            let _ = std::fs::remove_dir_all(&pre_open);
            copy_dir(&path, &pre_open).map_err(|e| Error::file(&pre_open, e))?;
            true
        } else {
            false
        };
        let (db, found, unreadable) = match open_db(data_dir, &path, opts.cache_mib) {
            Ok(db) => {
                let found = stored_generation(&db)?;
                (Some(db), found, None)
            }
            // sled gives up on some damage instead of dropping it (a log its snapshot points
            // past): as lost as the rest, with a way on.
            Err(Error::Db { source, .. }) if matches!(source, sled::Error::Corruption { .. }) => {
                (None, 0, Some(source.to_string()))
            }
            Err(e) => {
                if copied {
                    if matches!(e, Error::Locked(_)) {
                        // Another process has it (it started since we looked): not ours to touch.
                        let _ = std::fs::remove_dir_all(&pre_open);
                    } else {
                        let _ = std::fs::remove_dir_all(&path);
                        let _ = std::fs::rename(&pre_open, &path);
                    }
                }
                return Err(e);
            }
        };
        let expected = record.map_or(0, |r| r.generation);
        let lost = unreadable.is_some() || expected > found;
        let db = if lost {
            let loss = Loss {
                db_dir: path.clone(),
                expected: record,
                found_generation: found,
                clean,
                now: db.as_ref().map(Counts::of_db).unwrap_or_default(),
                unreadable,
            };
            if !opts.accept_data_loss {
                drop(db);
                if copied || !existed {
                    // Put the files back exactly as they were found (or not at all).
                    std::fs::remove_dir_all(&path).map_err(|e| Error::file(&path, e))?;
                }
                if copied {
                    std::fs::rename(&pre_open, &path).map_err(|e| Error::file(&path, e))?;
                }
                return Err(Error::DataLoss(Box::new(loss)));
            }
            accept_loss(data_dir, &loss, db, copied, opts.cache_mib)?
        } else {
            if copied {
                let _ = std::fs::remove_dir_all(&pre_open);
            }
            db.expect("opened when nothing was lost")
        };
        let _ = std::fs::remove_file(data_dir.join(commit::CLEAN_FILE));
        let db = Trees::whole(db);
        // The generation goes on from the larger of the two, so the record stays ahead of nothing
        // the database does not hold.
        let committer = Committer::new(&db, Some(data_dir), expected.max(found))?;
        let store = Self::new(db, committer, Some(data_dir.to_owned()));
        store.committer.commit_blocking()?;
        Ok(store)
    }

    /// Checks the database of `data_dir` without starting anything and without touching its files
    /// (`commucat doctor`): it is copied and the copy opened. `Ok` with what it holds, or the loss.
    pub fn check(data_dir: &Path) -> Result<Check, Error> {
        let path = data_dir.join(DB_DIR);
        check_unlocked(data_dir, &path)?;
        let scratch = tempfile_dir(data_dir)?;
        let result = (|| {
            if path.exists() {
                copy_dir(&path, &scratch.join(DB_DIR)).map_err(|e| Error::file(&path, e))?;
            }
            for name in [commit::COMMIT_FILE, commit::CLEAN_FILE] {
                let from = data_dir.join(name);
                if from.exists() {
                    std::fs::copy(&from, scratch.join(name)).map_err(|e| Error::file(&from, e))?;
                }
            }
            let record = commit::read_record(&scratch)?;
            let loss = |found, now, unreadable| {
                Error::DataLoss(Box::new(Loss {
                    db_dir: path.clone(),
                    expected: record,
                    found_generation: found,
                    clean: commit::read_clean(&scratch),
                    now,
                    unreadable,
                }))
            };
            let db = match open_db(&scratch, &scratch.join(DB_DIR), 8) {
                Ok(db) => db,
                Err(Error::Db { source, .. })
                    if matches!(source, sled::Error::Corruption { .. }) =>
                {
                    return Err(loss(0, Counts::default(), Some(source.to_string())));
                }
                Err(e) => return Err(e),
            };
            let found = stored_generation(&db)?;
            let counts = Counts::of_db(&db);
            if record.is_some_and(|r| r.generation > found) {
                return Err(loss(found, counts, None));
            }
            let accepted = db
                .open_tree(META_TREE)?
                .get(commit::LOSS_KEY)?
                .and_then(|v| serde_json::from_slice(&v).ok());
            Ok(Check {
                generation: found,
                recorded: record,
                counts,
                accepted,
            })
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn new(db: Trees, committer: Committer, data_dir: Option<PathBuf>) -> Self {
        Self {
            db,
            committer,
            data_dir,
            inbox_notify: crate::broadcast::Broadcast::new(inbox::NOTIFY_BUFFER),
        }
    }

    /// A database that lives in memory and vanishes on drop (tests, in-process simulation).
    /// Its log is written in 64 KiB segments rather than sled's 512 KiB: each write lands in an
    /// in-memory buffer of one segment, so a thousand simulated nodes kept up to a thousand
    /// half-touched 512 KiB buffers (`cargo bench -p simnet --bench node_parts`).
    pub fn temporary() -> Result<Self, Error> {
        let db = Trees::whole(temporary_config(1024 * 1024).open()?);
        let committer = Committer::new(&db, None, 0)?;
        Ok(Self::new(db, committer, None))
    }

    /// A temporary store whose trees live in `shared` under the prefix `name/` (simulated
    /// nodes, see [`SharedTemporary`]): alike in everything but the cost of a database.
    pub fn temporary_in(shared: &SharedTemporary, name: &str) -> Result<Self, Error> {
        let db = shared.trees(name);
        let committer = Committer::new(&db, None, 0)?;
        Ok(Self::new(db, committer, None))
    }

    /// Flushes the database and records a clean stop (`db.clean`), so that the next start can
    /// open the files without copying them first. Call last, when nothing writes any more.
    pub async fn close(&self) -> Result<(), Error> {
        self.commit().await?;
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        let clean = commit::Clean {
            generation: self.committer.generation(),
            stopped_at_ms: crate::time::unix_ms(),
            files: commit::stamps(&dir.join(DB_DIR)).map_err(Error::Io)?,
            counts: Counts::of(&self.db),
        };
        commit::write_clean(dir, &clean).map_err(|e| Error::file(dir, e))
    }

    pub fn peer_book(&self, limits: peerbook::Limits) -> Result<PeerBook, Error> {
        Ok(PeerBook::new(self.db.open_tree(peerbook::TREE)?, limits))
    }

    pub fn outbox(&self) -> Result<Outbox, Error> {
        Outbox::open(&self.db, self.committer.clone())
    }

    pub fn inbox(&self) -> Result<Inbox, Error> {
        Inbox::open(&self.db, self.committer.clone(), self.inbox_notify.clone())
    }

    /// Commits (see [`Committer`]) for parts that keep their own trees (assist tokens).
    pub fn committer(&self) -> Committer {
        self.committer.clone()
    }

    pub fn transfers(&self) -> Result<Transfers, Error> {
        Transfers::open(&self.db)
    }

    pub fn bundles(&self) -> Result<Bundles, Error> {
        Bundles::open(self)
    }

    pub fn presence_seq(&self) -> Result<PresenceSeq, Error> {
        PresenceSeq::presence(self)
    }

    pub fn name_claim(&self) -> Result<NameClaim, Error> {
        NameClaim::open(self)
    }

    pub fn contacts(&self) -> Result<Contacts, Error> {
        Contacts::open(self)
    }

    pub fn devices(&self) -> Result<Devices, Error> {
        Devices::open(self)
    }

    pub fn group_logs(&self) -> Result<GroupLogs, Error> {
        GroupLogs::open(self)
    }

    pub fn assist_tokens(&self) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(ASSIST_TOKENS_TREE)?)
    }

    #[cfg(test)]
    pub(crate) fn meta(&self) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(META_TREE)?)
    }

    /// Makes everything written so far durable, and records the commit (see [`Committer`]).
    pub async fn commit(&self) -> Result<(), Error> {
        self.committer.commit().await
    }
}

/// `--accept-data-loss`: keeps the damaged files beside the database (`db.damaged-<time>`), goes on
/// with what could be read (or an empty database), and records in `meta` that the loss was
/// accepted.
fn accept_loss(
    data_dir: &Path,
    loss: &Loss,
    db: Option<sled::Db>,
    copied: bool,
    cache_mib: u64,
) -> Result<sled::Db, Error> {
    let path = &loss.db_dir;
    let pre_open = data_dir.join(commit::PRE_OPEN_DIR);
    let (expected, found) = (
        loss.expected.map_or(0, |r| r.generation),
        loss.found_generation,
    );
    let kept = data_dir.join(format!("db.damaged-{}", crate::time::unix_secs()));
    let kept = if copied {
        std::fs::rename(&pre_open, &kept).map_err(|e| Error::file(&pre_open, e))?;
        Some(kept)
    } else if db.is_none() {
        std::fs::rename(path, &kept).map_err(|e| Error::file(path, e))?;
        Some(kept)
    } else {
        None
    };
    let db = match db {
        Some(db) => db,
        None => {
            // Nothing of it can be read: start on an empty database.
            let _ = std::fs::remove_dir_all(path);
            open_db(data_dir, path, cache_mib)?
        }
    };
    tracing::warn!(
        kept = ?kept,
        "starting on a database that lost committed state (--accept-data-loss):\n{loss}"
    );
    let accepted = commit::Accepted {
        at_ms: crate::time::unix_ms(),
        expected_generation: expected,
        found_generation: found,
        kept,
    };
    db.open_tree(META_TREE)?.insert(
        commit::LOSS_KEY,
        serde_json::to_vec(&accepted).expect("plain values"),
    )?;
    Ok(db)
}

/// What `commucat doctor` found in a database that holds what it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub generation: u64,
    /// The commit record, when there is one (a database older than it has none).
    pub recorded: Option<commit::Record>,
    pub counts: Counts,
    /// A start that accepted lost data earlier, if one did.
    pub accepted: Option<commit::Accepted>,
}

/// How long opening waits for the database's lock: sled's background threads of a database that
/// was just closed (a node restarted in the same process, say) let go of it within moments.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A database in memory (a temporary file sled deletes on drop) with a cache of `cache_bytes`.
fn temporary_config(cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .temporary(true)
        .cache_capacity(cache_bytes)
        .segment_size(64 * 1024)
        .flush_every_ms(None)
}

fn open_db(data_dir: &Path, path: &Path, cache_mib: u64) -> Result<sled::Db, Error> {
    waiting_for_lock(|| {
        sled::Config::new()
            .path(path)
            .cache_capacity(cache_mib.saturating_mul(1024 * 1024))
            .open()
            .map_err(|source| match &source {
                // sled reports a held file lock as an I/O error with this text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    Error::Locked(data_dir.to_owned())
                }
                _ => Error::Db {
                    path: path.to_owned(),
                    source,
                },
            })
    })
}

/// `attempt` again while it fails with [`Error::Locked`], for up to [`LOCK_WAIT`].
fn waiting_for_lock<T>(mut attempt: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match attempt() {
            Err(Error::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The generation the database holds, read without creating anything.
fn stored_generation(db: &sled::Db) -> Result<u64, Error> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == META_TREE.as_bytes())
    {
        return Ok(0);
    }
    Ok(db
        .open_tree(META_TREE)?
        .get(commit::GENERATION_KEY)?
        .and_then(|v| commit::generation_of(&v))
        .unwrap_or(0))
}

/// Fails with [`Error::Locked`] while another process holds the database (sled locks `db/db`).
fn check_unlocked(data_dir: &Path, db_dir: &Path) -> Result<(), Error> {
    let file = db_dir.join("db");
    let Ok(f) = std::fs::File::open(&file) else {
        return Ok(());
    };
    waiting_for_lock(|| match f.try_lock() {
        Ok(()) => {
            let _ = f.unlock();
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(data_dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::file(&file, e)),
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A fresh scratch directory beside the data directory (same file system, so copies are local).
fn tempfile_dir(data_dir: &Path) -> Result<PathBuf, Error> {
    let dir = data_dir.join(format!(
        "db.check-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).map_err(|e| Error::file(&dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests;
