//! File transfer pieces (`protocols/data-v1.md` §6): received names made safe, whole-file hashes,
//! the receiver's state of one transfer (partial file, bitmap of written blocks, block decoders) and
//! the sender's block reading. Everything here does blocking file I/O: callers run it on the
//! blocking pool.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::wire::{ErrorCode, FileMeta, FileStatus, file_state};
use crate::{
    fec,
    store::transfers::{Incoming, Layout, Outgoing, State, TransferFile, Transfers},
};

/// Directory inside the downloads directory for partial files.
pub const PARTIAL_DIR: &str = ".commucat-partial";
/// FILE_META `hash_alg` of SHA-256.
pub const HASH_SHA256: u8 = 1;
/// Blocks per transfer at most.
pub const MAX_BLOCKS: u32 = 1 << 20;
/// The receiver reports progress every this many blocks.
pub const STATUS_EVERY_BLOCKS: u32 = 4;
/// The sender keeps at most this many blocks ahead of the receiver's last FILE_STATUS.
pub const FILE_WINDOW_BLOCKS: u32 = 8;
/// Blocks being assembled at once per transfer.
pub const MAX_OPEN_BLOCKS: usize = 2 * FILE_WINDOW_BLOCKS as usize;
/// Longest stored file name, bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a receiver refuses or fails a transfer: the code for FILE_STATUS / ERROR, and a message.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn storage(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::STORAGE, e.to_string())
    }
}

/// A peer-supplied name made safe to create inside the downloads directory (§6).
pub fn sanitize_name(name: &str, transfer_id: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() || c == '\0' { '_' } else { c })
        .collect();
    let trimmed = cleaned.trim_start_matches('.').trim();
    if trimmed.is_empty() {
        return format!("file-{transfer_id}");
    }
    let mut end = trimmed.len().min(MAX_NAME_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    trimmed[..end].to_owned()
}

/// `dir/name`, or `dir/stem (n).ext` for the first `n` that does not exist yet.
pub fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    (1u32..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// SHA-256 of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

pub fn bit(bitmap: &[u8], i: u32) -> bool {
    bitmap
        .get(usize::try_from(i / 8).unwrap_or(usize::MAX))
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(bitmap: &mut [u8], i: u32) {
    if let Some(b) = bitmap.get_mut(usize::try_from(i / 8).unwrap_or(usize::MAX)) {
        *b |= 1 << (i % 8);
    }
}

/// The store key of an incoming transfer: the sender's and its transfer id, so one peer can never
/// touch another's transfer.
pub fn incoming_key(from: &PeerId, transfer_id: &[u8; 16]) -> String {
    format!("{from}:{}", hex::encode(transfer_id))
}

/// The receiving side of one transfer.
pub struct Receiving {
    pub record: Incoming,
    bitmap: Vec<u8>,
    file: Option<File>,
    decoders: HashMap<u32, fec::BlockDecoder>,
    transfer_id: [u8; 16],
    downloads: PathBuf,
}

impl Receiving {
    /// Starts or resumes the transfer FILE_META announces.
    pub fn begin(
        transfers: &Transfers,
        downloads: &Path,
        from: PeerId,
        meta: &FileMeta,
        max_file_bytes: u64,
    ) -> Result<Self, Failure> {
        let layout = Layout {
            size: meta.size,
            block_size: meta.block_size,
            symbol_size: meta.symbol_size,
            repair_per_mille: meta.repair_per_mille,
        };
        check_meta(meta, &layout, max_file_bytes)?;
        let key = incoming_key(&from, &meta.transfer_id);
        let existing = transfers.incoming().get(&key).map_err(Failure::storage)?;
        let partial_dir = downloads.join(PARTIAL_DIR);
        let partial_path = partial_dir.join(format!("{}.part", hex::encode(meta.transfer_id)));
        let blocks = layout.blocks();
        let record = match existing {
            Some(r) if r.file.layout == layout && r.file.sha256 == hex::encode(meta.hash) => r,
            _ => Incoming {
                id: key,
                from,
                file: TransferFile::new(
                    sanitize_name(&meta.name, &hex::encode(meta.transfer_id)),
                    meta.hash,
                    layout,
                    State::Active,
                ),
                bitmap: hex::encode(vec![0u8; usize::try_from(blocks.div_ceil(8)).unwrap_or(0)]),
                partial_path: partial_path.clone(),
                final_path: None,
            },
        };
        let mut bitmap =
            hex::decode(&record.bitmap).map_err(|_| Failure::storage("corrupt bitmap"))?;
        let mut record = record;
        let file = if record.file.state.is_finished() {
            None
        } else {
            fs::create_dir_all(&partial_dir).map_err(Failure::storage)?;
            if !partial_path.exists() && record.file.blocks_done > 0 {
                // The partial file is gone: start over.
                bitmap.iter_mut().for_each(|b| *b = 0);
                record.file.blocks_done = 0;
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial_path)
                .map_err(Failure::storage)?;
            f.set_len(meta.size).map_err(Failure::storage)?;
            record.file.state = State::Active;
            Some(f)
        };
        record.bitmap = hex::encode(&bitmap);
        transfers
            .incoming()
            .put(&record)
            .map_err(Failure::storage)?;
        Ok(Self {
            record,
            bitmap,
            file,
            decoders: HashMap::new(),
            transfer_id: meta.transfer_id,
            downloads: downloads.to_owned(),
        })
    }

    pub fn transfer_id(&self) -> [u8; 16] {
        self.transfer_id
    }

    pub fn status(&self) -> FileStatus {
        let (state, error) = match self.record.file.state {
            State::Complete => (file_state::COMPLETE, 0),
            State::Failed => (
                file_state::FAILED,
                self.record
                    .file
                    .error
                    .as_deref()
                    .and_then(|e| e.split(':').next()?.trim().parse().ok())
                    .unwrap_or(ErrorCode::INTERNAL.0),
            ),
            _ => (file_state::RECEIVING, 0),
        };
        FileStatus {
            transfer_id: self.transfer_id,
            state,
            error,
            blocks: self.record.file.blocks_total,
            bitmap: Bytes::copy_from_slice(&self.bitmap),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.record.file.state.is_finished()
    }

    pub fn all_blocks_done(&self) -> bool {
        self.record.file.blocks_done == self.record.file.blocks_total
    }

    /// Adds packets of `block`; when that completes the block, writes it, syncs it and marks it
    /// done. Returns whether a block was completed.
    pub fn chunk(
        &mut self,
        transfers: &Transfers,
        block: u32,
        packets: &[u8],
    ) -> Result<bool, Failure> {
        if self.is_finished() {
            return Ok(false);
        }
        if block >= self.record.file.blocks_total {
            return Err(Failure::new(
                ErrorCode::MALFORMED,
                format!("block {block} beyond the file"),
            ));
        }
        if bit(&self.bitmap, block) {
            return Ok(false); // already written (a resend after resume)
        }
        if !self.decoders.contains_key(&block) && self.decoders.len() >= MAX_OPEN_BLOCKS {
            return Err(Failure::new(
                ErrorCode::LIMIT,
                "too many blocks in progress",
            ));
        }
        let layout = self.record.file.layout;
        let len = layout.block_len(block);
        let decoder = match self.decoders.entry(block) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                fec::BlockDecoder::new(len, layout.symbol_size)
                    .map_err(|err| Failure::new(ErrorCode::MALFORMED, err.to_string()))?,
            ),
        };
        let Some(data) = decoder
            .push(packets)
            .map_err(|err| Failure::new(ErrorCode::MALFORMED, err.to_string()))?
        else {
            return Ok(false);
        };
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Failure::storage("no partial file"))?;
        let offset = u64::from(block) * u64::from(layout.block_size);
        file.write_all_at(data, offset).map_err(Failure::storage)?;
        file.sync_data().map_err(Failure::storage)?;
        self.decoders.remove(&block);
        set_bit(&mut self.bitmap, block);
        self.record.file.blocks_done += 1;
        self.record.bitmap = hex::encode(&self.bitmap);
        transfers
            .incoming()
            .put(&self.record)
            .map_err(Failure::storage)?;
        Ok(true)
    }

    /// Every block is written: checks the hash, then moves the file into the downloads directory
    /// (or deletes it on a mismatch).
    pub fn finish(&mut self, transfers: &Transfers) -> Result<PathBuf, Failure> {
        let result = (|| {
            let got = sha256_file(&self.record.partial_path).map_err(Failure::storage)?;
            if hex::encode(got) != self.record.file.sha256 {
                let _ = fs::remove_file(&self.record.partial_path);
                return Err(Failure::new(
                    ErrorCode::HASH_MISMATCH,
                    format!(
                        "file hash {} does not match the announced one",
                        hex::encode(got)
                    ),
                ));
            }
            let target = unique_path(&self.downloads, &self.record.file.name);
            fs::rename(&self.record.partial_path, &target).map_err(Failure::storage)?;
            Ok(target)
        })();
        self.file = None;
        self.record.file.completed_at_ms = Some(crate::time::unix_ms());
        match &result {
            Ok(path) => {
                self.record.file.state = State::Complete;
                self.record.final_path = Some(path.clone());
            }
            Err(f) => {
                self.record.file.state = State::Failed;
                self.record.file.error = Some(format!("{}: {}", f.code.0, f.message));
            }
        }
        transfers
            .incoming()
            .put(&self.record)
            .map_err(Failure::storage)?;
        result
    }
}

fn check_meta(meta: &FileMeta, layout: &Layout, max_file_bytes: u64) -> Result<(), Failure> {
    let reject = |m: &str| Err(Failure::new(ErrorCode::FILE_REJECTED, m));
    if meta.hash_alg != HASH_SHA256 {
        return reject("unknown hash algorithm");
    }
    if meta.size == 0 || meta.size > max_file_bytes {
        return reject("file size outside what this node accepts");
    }
    if !(4096..=4 << 20).contains(&meta.block_size)
        || !meta
            .block_size
            .is_multiple_of(u32::from(meta.symbol_size.max(1)))
    {
        return reject("block size");
    }
    if let Err(e) = fec::check(u64::from(meta.block_size), meta.symbol_size) {
        return Err(Failure::new(ErrorCode::FILE_REJECTED, e.to_string()));
    }
    if meta.repair_per_mille > 1000 {
        return reject("repair overhead above 1000 ‰");
    }
    if layout.blocks() > MAX_BLOCKS {
        return reject("too many blocks");
    }
    Ok(())
}

/// Describes a local file to send: size and hash (reads the whole file).
pub fn prepare(path: &Path, to: PeerId, cfg: &super::Config) -> io::Result<Outgoing> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty files are not sent",
        ));
    }
    let layout = Layout {
        size: meta.len(),
        block_size: cfg.block_size,
        symbol_size: cfg.symbol_size,
        repair_per_mille: cfg.repair_per_mille,
    };
    if layout.blocks() > MAX_BLOCKS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large for the block size",
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok(Outgoing {
        id: hex::encode(rand::random::<[u8; 16]>()),
        to,
        path: path.to_owned(),
        file: TransferFile::new(name, sha256_file(path)?, layout, State::Queued),
        bytes_sent: 0,
        sessions: 0,
    })
}

/// Reads block `i` of a file and RaptorQ-encodes it.
pub fn encode_block(path: &Path, layout: &Layout, i: u32) -> io::Result<Vec<u8>> {
    let len = usize::try_from(layout.block_len(i)).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    File::open(path)?.read_exact_at(&mut buf, u64::from(i) * u64::from(layout.block_size))?;
    fec::encode_block(&buf, layout.symbol_size, layout.repair_per_mille).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_inside_the_downloads_directory() {
        let id = "00ff";
        for (given, want) in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("..", "file-00ff"),
            ("", "file-00ff"),
            (".bashrc", "bashrc"),
            ("a\u{0}b\nc", "a_b_c"),
            ("dir/", "file-00ff"),
        ] {
            assert_eq!(sanitize_name(given, id), want, "{given:?}");
        }
        let long = "é".repeat(200);
        let s = sanitize_name(&long, id);
        assert!(s.len() <= MAX_NAME_BYTES && s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn existing_names_get_a_number() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"x").unwrap();
        fs::write(dir.path().join("a (1).txt"), b"x").unwrap();
        assert_eq!(
            unique_path(dir.path(), "a.txt"),
            dir.path().join("a (2).txt")
        );
        assert_eq!(unique_path(dir.path(), "b"), dir.path().join("b"));
    }
}
