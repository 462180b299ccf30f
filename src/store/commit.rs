//! Evidence of what the database committed, kept outside it, and the start-up check against it
//! (`protocols/store-v1.md`).
//!
//! sled's recovery replays its log and silently drops whatever does not check out, so a truncated
//! or overwritten `db/db` opens as an empty or older database with no error — and a node that
//! starts on it has forgotten its inbox, its outbox, its tokens and the per-sender marks that make
//! delivery exactly-once. Every commit (a flush that something is promised on: an ACK, a queued
//! message, an issued token) therefore raises a generation number, stored both in the database
//! (`meta/commit_generation`) and, after the flush, in `DATA_DIR/db.commit`, which is two
//! checksummed 64-byte slots written alternately (a torn write leaves the other slot). At start the
//! database must hold at least the generation the file names; if it does not, committed state was
//! lost and the node refuses to start (see [`Loss`]).
//!
//! A clean stop also writes `DATA_DIR/db.clean`: the generation, the sizes and modification times
//! of the database files, and how many records it held. When a start finds the files as that
//! record says, they are opened directly; otherwise (after a crash, or when something changed
//! them) they are copied first, so that if the check fails the files are put back exactly as they
//! were found — sled's recovery may rewrite them while opening.

use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::UNIX_EPOCH,
};

use serde::{Deserialize, Serialize};

use super::{Counts, Error};

/// The commit record: two slots of [`SLOT_LEN`] bytes.
pub const COMMIT_FILE: &str = "db.commit";
/// Written at a clean stop, removed at the next start.
pub const CLEAN_FILE: &str = "db.clean";
/// The copy taken before opening files that may have changed (removed once the check passes).
pub const PRE_OPEN_DIR: &str = "db.pre-open";
/// Key in the `meta` tree: the database's commit generation.
pub const GENERATION_KEY: &[u8] = b"commit_generation";
/// Key in the `meta` tree, present once a start accepted lost data (JSON [`Accepted`]).
pub const LOSS_KEY: &[u8] = b"data_loss_accepted";

const MAGIC: &[u8; 8] = b"CCDBCMT1";
pub const SLOT_LEN: usize = 64;

/// One slot: `magic:[8] generation:u64 written_at_ms:u64 zero:[36] crc32:u32` (CRC-32 of the
/// first 60 bytes), all big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub generation: u64,
    pub written_at_ms: u64,
}

impl Record {
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_be_bytes());
        b[16..24].copy_from_slice(&self.written_at_ms.to_be_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != SLOT_LEN || &b[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(b[60..].try_into().ok()?);
        if crc != crc32fast::hash(&b[..60]) {
            return None;
        }
        Some(Self {
            generation: u64::from_be_bytes(b[8..16].try_into().ok()?),
            written_at_ms: u64::from_be_bytes(b[16..24].try_into().ok()?),
        })
    }
}

/// A stored generation (8 bytes, big-endian).
pub fn generation_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Reads `db.commit`: `Ok(None)` when there is none, the newer valid slot otherwise.
pub fn read_record(data_dir: &Path) -> Result<Option<Record>, Error> {
    let path = data_dir.join(COMMIT_FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(f) => {
            f.take(4 * SLOT_LEN as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::file(&path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(&path, e)),
    }
    let best = bytes
        .chunks(SLOT_LEN)
        .take(2)
        .filter_map(Record::decode)
        .max_by_key(|r| r.generation);
    match best {
        Some(r) => Ok(Some(r)),
        None => Err(Error::CommitRecord(path)),
    }
}

/// The open `db.commit`, written after every flush.
struct RecordFile {
    file: File,
}

impl RecordFile {
    fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(COMMIT_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::file(&path, e))?;
        Ok(Self { file })
    }

    /// Writes `r` into the slot of its generation's parity and makes it durable.
    fn write(&self, r: Record) -> std::io::Result<()> {
        let offset = (r.generation % 2) * SLOT_LEN as u64;
        self.file.write_all_at(&r.encode(), offset)?;
        self.file.sync_data()
    }
}

/// Commits: flush the database, then record the generation outside it. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
}

struct Inner {
    db: super::Trees,
    meta: sled::Tree,
    record: Option<Mutex<RecordFile>>,
    generation: AtomicU64,
    /// Writes someone will ask about ([`Committer::noted`]): how many completed. The write and
    /// the look at what was written both hold this lock, so a count read under it covers
    /// everything the reader saw.
    noted: Mutex<u64>,
    /// The count of noted writes a finished commit covered.
    durable: AtomicU64,
}

impl Committer {
    pub(super) fn new(
        db: &super::Trees,
        data_dir: Option<&Path>,
        generation: u64,
    ) -> Result<Self, Error> {
        let record = match data_dir {
            Some(dir) => Some(Mutex::new(RecordFile::open(dir)?)),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                meta: db.open_tree(super::META_TREE)?,
                record,
                generation: AtomicU64::new(generation),
                noted: Mutex::new(0),
                durable: AtomicU64::new(0),
            }),
        })
    }

    /// The generation of the last commit.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Makes everything written so far durable and records that it was. Commits may run
    /// concurrently: the stored generation only grows (see `Committer::bump`), and a record is
    /// written only after a flush that covered its generation, so the file never names a
    /// generation the database does not durably hold.
    ///
    /// The flush runs on one of tokio's blocking threads, not through `Db::flush_async`: sled
    /// 0.34.7 runs that on its own thread pool, where concurrent flushes wait for writes queued
    /// behind them on the same pool, which then stops growing, so they never finish
    /// (spacejam/sled#1308, fixed on sled's main branch, never released).
    pub async fn commit(&self) -> Result<(), Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.commit_blocking();
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit_blocking())
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    /// As [`Committer::commit`], from blocking code.
    pub fn commit_blocking(&self) -> Result<(), Error> {
        let noted = self.noted_count();
        let generation = self.bump()?;
        self.inner.db.flush()?;
        self.write_record(generation)?;
        self.inner.durable.fetch_max(noted, Ordering::AcqRel);
        Ok(())
    }

    fn noted_count(&self) -> u64 {
        *self.inner.noted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `write` and counts it as a noted write (one whose durability a reader will ask
    /// about, see [`Committer::read_noted`]).
    pub fn noted<T, E>(&self, write: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut n = self.inner.noted.lock().unwrap_or_else(|e| e.into_inner());
        let out = write()?;
        *n += 1;
        Ok(out)
    }

    /// Runs `read` and returns with it the mark that [`Committer::commit_through`] takes:
    /// every noted write whose result `read` saw is counted in it.
    pub fn read_noted<T>(&self, read: impl FnOnce() -> T) -> (T, u64) {
        let n = self.inner.noted.lock().unwrap_or_else(|e| e.into_inner());
        (read(), *n)
    }

    /// Makes the noted writes up to `mark` durable: at once if a finished commit covered them,
    /// else by committing.
    pub async fn commit_through(&self, mark: u64) -> Result<(), Error> {
        if self.inner.durable.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        self.commit().await
    }

    /// Takes the next generation and stores it, never lowering what is stored: two commits that
    /// race store the larger of their numbers.
    fn bump(&self) -> Result<u64, Error> {
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.meta.fetch_and_update(GENERATION_KEY, |old| {
            let old = old.and_then(generation_of).unwrap_or(0);
            Some(old.max(generation).to_be_bytes().to_vec())
        })?;
        Ok(generation)
    }

    fn write_record(&self, generation: u64) -> Result<(), Error> {
        let Some(file) = &self.inner.record else {
            return Ok(());
        };
        let file = file.lock().unwrap_or_else(|e| e.into_inner());
        file.write(Record {
            generation,
            written_at_ms: crate::time::unix_ms(),
        })
        .map_err(Error::Io)
    }
}

/// `db.clean`: what a clean stop left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clean {
    pub generation: u64,
    pub stopped_at_ms: u64,
    pub files: Vec<FileStamp>,
    pub counts: Counts,
}

/// A database file as a clean stop left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub name: String,
    pub len: u64,
    pub modified_ns: u128,
}

/// The files of the database directory, by name (sub-directories such as `blobs/` by their
/// entries), sorted.
pub fn stamps(db_dir: &Path) -> std::io::Result<Vec<FileStamp>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<FileStamp>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(root, &entry.path(), out)?;
                continue;
            }
            let name = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let modified_ns = meta
                .modified()?
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            out.push(FileStamp {
                name,
                len: meta.len(),
                modified_ns,
            });
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(db_dir, db_dir, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn read_clean(data_dir: &Path) -> Option<Clean> {
    let bytes = std::fs::read(data_dir.join(CLEAN_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `db.clean` (temporary file, sync, rename).
pub fn write_clean(data_dir: &Path, clean: &Clean) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{CLEAN_FILE}.tmp"));
    {
        let f = File::create(&tmp)?;
        serde_json::to_writer(&f, clean)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, data_dir.join(CLEAN_FILE))
}

/// Recorded in `meta` when a start accepted lost data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub at_ms: u64,
    pub expected_generation: u64,
    pub found_generation: u64,
    /// Where the damaged files were kept, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
}

/// Committed state the database no longer holds: what the node refuses to start on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub db_dir: PathBuf,
    /// The commit record (none for a database from before it existed).
    pub expected: Option<Record>,
    pub found_generation: u64,
    /// The last clean stop, when it was on record.
    pub clean: Option<Clean>,
    pub now: Counts,
    /// sled could not open the files at all: its error.
    pub unreadable: Option<String>,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = |ms: u64| crate::time::rfc3339(ms / 1000);
        match (&self.unreadable, self.expected) {
            (Some(e), Some(r)) => writeln!(
                f,
                "the database in {} has lost state it had committed: it cannot be read any more \
                 ({e}), and commit {} was made durably ({}).",
                self.db_dir.display(),
                r.generation,
                when(r.written_at_ms),
            )?,
            (Some(e), None) => writeln!(
                f,
                "the database in {} has lost state it had committed: it cannot be read any more \
                 ({e}).",
                self.db_dir.display(),
            )?,
            (None, r) => writeln!(
                f,
                "the database in {} has lost state it had committed: it opens at commit {}, but \
                 commit {} was made durably ({}).",
                self.db_dir.display(),
                self.found_generation,
                r.map_or(0, |r| r.generation),
                r.map_or_else(|| "time unknown".into(), |r| when(r.written_at_ms)),
            )?,
        }
        if let Some(c) = &self.clean {
            writeln!(
                f,
                "At the last clean stop ({}) it held {}.",
                when(c.stopped_at_ms),
                c.counts
            )?;
        }
        if self.unreadable.is_none() {
            writeln!(f, "It now holds {}.", self.now)?;
        }
        writeln!(
            f,
            "Lost with it may be: received messages, messages waiting to be sent, the marks that \
             keep a sender's messages from being shown twice, assist tokens and file-transfer \
             progress. The damaged files are left as they are."
        )?;
        writeln!(f, "What to do:")?;
        writeln!(
            f,
            "  - if you have a backup of {}, stop here and restore it;",
            self.db_dir.display()
        )?;
        writeln!(
            f,
            "  - `commucat doctor` shows this report again without starting;"
        )?;
        write!(
            f,
            "  - `commucat run --accept-data-loss` starts on what is left: the damaged files are \
             kept beside it, peers send again what they still have, and no message is shown twice."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Options, Store};

    #[derive(Deserialize)]
    struct Vectors {
        valid: Vec<Valid>,
        invalid: Vec<Invalid>,
    }

    #[derive(Deserialize)]
    struct Valid {
        name: String,
        generation: u64,
        written_at_ms: u64,
        hex: String,
    }

    #[derive(Deserialize)]
    struct Invalid {
        name: String,
        hex: String,
    }

    #[test]
    fn slots_match_the_spec_vectors() {
        let v: Vectors =
            serde_json::from_str(include_str!("../../protocols/vectors/store-v1-commit.json"))
                .unwrap();
        for s in v.valid {
            let bytes = hex::decode(&s.hex).unwrap();
            let r = Record::decode(&bytes).unwrap_or_else(|| panic!("{}", s.name));
            assert_eq!(
                (r.generation, r.written_at_ms),
                (s.generation, s.written_at_ms),
                "{}",
                s.name
            );
            assert_eq!(r.encode().as_slice(), bytes.as_slice(), "{}", s.name);
        }
        for s in v.invalid {
            assert_eq!(
                Record::decode(&hex::decode(&s.hex).unwrap()),
                None,
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), None);
        let f = RecordFile::open(dir.path()).unwrap();
        for g in [1, 2, 3] {
            f.write(Record {
                generation: g,
                written_at_ms: g * 10,
            })
            .unwrap();
        }
        assert_eq!(read_record(dir.path()).unwrap().unwrap().generation, 3);
        // Generation 3 lives in slot 1; tear it: slot 0 (generation 2) is what remains.
        f.file
            .write_all_at(&[0xff; 8], SLOT_LEN as u64 + 20)
            .unwrap();
        assert_eq!(read_record(dir.path()).unwrap().unwrap().generation, 2);
        f.file.write_all_at(&[0xff; 8], 20).unwrap();
        assert!(matches!(
            read_record(dir.path()),
            Err(Error::CommitRecord(_))
        ));
    }

    fn hashes(dir: &Path) -> Vec<(String, Vec<u8>)> {
        use sha2::Digest;
        let mut out: Vec<_> = stamps(dir)
            .unwrap()
            .into_iter()
            .map(|s| {
                let bytes = std::fs::read(dir.join(&s.name)).unwrap();
                (s.name, sha2::Sha256::digest(bytes).to_vec())
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_truncated_database_is_refused_untouched_then_accepted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Options::cache(8)).unwrap();
            let inbox = store.inbox().unwrap();
            let from = libp2p::PeerId::random();
            for seq in 1..=5 {
                inbox
                    .accept(
                        &from,
                        &crate::wire::Data {
                            epoch: 1,
                            seq,
                            msg_id: [0; 16],
                            sent_at_ms: 0,
                            via: Default::default(),
                            group: None,
                            body: "hi".into(),
                        },
                    )
                    .unwrap();
            }
            inbox.flush().await.unwrap();
            store.close().await.unwrap();
        }
        assert!(read_clean(dir.path()).is_some());
        // A clean restart opens without a copy and finds everything.
        {
            let store = Store::open(dir.path(), Options::cache(8)).unwrap();
            assert_eq!(store.inbox().unwrap().len(), 5);
            assert!(!dir.path().join(PRE_OPEN_DIR).exists());
            store.close().await.unwrap();
        }
        let db = dir.path().join(crate::store::DB_DIR);
        File::options()
            .write(true)
            .open(db.join("db"))
            .unwrap()
            .set_len(0)
            .unwrap();
        let before = hashes(&db);
        let err = Store::open(dir.path(), Options::cache(8)).err().unwrap();
        let Error::DataLoss(loss) = err else {
            panic!("{err}: {:?}", std::error::Error::source(&err))
        };
        assert_eq!(loss.clean.as_ref().unwrap().counts.inbox, 5);
        assert_eq!(loss.now.inbox, 0);
        assert!(loss.to_string().contains("5 received messages"), "{loss}");
        assert_eq!(
            hashes(&db),
            before,
            "the damaged files are left as they were"
        );
        assert!(!dir.path().join(PRE_OPEN_DIR).exists());
        // doctor agrees, and touches nothing either.
        assert!(matches!(Store::check(dir.path()), Err(Error::DataLoss(_))));
        assert_eq!(hashes(&db), before);

        let store = Store::open(
            dir.path(),
            Options {
                cache_mib: 8,
                accept_data_loss: true,
            },
        )
        .unwrap();
        let accepted: Accepted =
            serde_json::from_slice(&store.meta().unwrap().get(LOSS_KEY).unwrap().unwrap()).unwrap();
        let kept = accepted.kept.unwrap();
        assert_eq!(hashes(&kept), before, "the damaged files are kept");
        store.close().await.unwrap();
        drop(store);
        let check = Store::check(dir.path()).unwrap();
        assert!(check.accepted.is_some());
        assert!(check.generation >= check.recorded.unwrap().generation);
    }
}
