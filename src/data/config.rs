//! The `[data]` section: received files, RaptorQ parameters of files sent, delivery retries, key
//! rotation, protocol version and key updates. Checked by `crate::config`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[data]` section.
pub struct Config {
    /// Where received files land; without one, `DATA_DIR/downloads`.
    pub downloads_dir: Option<std::path::PathBuf>,
    /// Largest file this node accepts.
    pub max_file_bytes: u64,
    /// RaptorQ symbol size of files this node sends (64 … 8192, multiple of 8).
    pub symbol_size: u16,
    /// Bytes per RaptorQ source block of files this node sends (a multiple of the symbol size,
    /// 4 KiB … 4 MiB).
    pub block_size: u32,
    /// Repair packets per block in ‰ of its source packets; 0 on a reliable stream.
    pub repair_per_mille: u16,
    /// Longest wait between delivery attempts to an unreachable peer (backoff from 1 s).
    pub max_retry_secs: u64,
    /// Upper bound on the rate this node sends file data at, KiB/s; 0 = unlimited.
    pub max_send_rate_kib: u64,
    /// Age at which the key bundle (Noise static key and ML-KEM-768 key) is replaced by a new one;
    /// 0 = never.
    pub key_rotation_secs: u64,
    /// How long a replaced bundle still answers handshakes that name it.
    pub key_grace_secs: u64,
    /// The newest version of `/commucat/data` this node speaks (1 or 2; `protocols/data-v2.md`).
    pub protocol_version: u8,
    /// A version 2 session updates its keys after this many bytes sent by its initiator…
    pub rekey_bytes: u64,
    /// …or after this long, whichever comes first.
    pub rekey_secs: u64,
}

impl Config {
    /// When version 2 sessions update their keys.
    pub fn rekey_policy(&self) -> crate::data::session::RekeyPolicy {
        crate::data::session::RekeyPolicy {
            bytes: self.rekey_bytes,
            interval: Duration::from_secs(self.rekey_secs),
        }
    }

    /// The bundle rotation schedule these settings describe.
    pub fn key_schedule(&self) -> crate::crypto::keyring::Schedule {
        crate::crypto::keyring::Schedule {
            rotation: (self.key_rotation_secs > 0)
                .then(|| Duration::from_secs(self.key_rotation_secs)),
            grace: Duration::from_secs(self.key_grace_secs),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            downloads_dir: None,
            max_file_bytes: 4 << 30,
            symbol_size: 1024,
            block_size: 1 << 20,
            repair_per_mille: 0,
            max_retry_secs: 60,
            max_send_rate_kib: 0,
            key_rotation_secs: 7 * 24 * 3600,
            key_grace_secs: 7 * 24 * 3600,
            protocol_version: crate::wire::VERSION,
            rekey_bytes: 1 << 30,
            rekey_secs: 3600,
        }
    }
}
