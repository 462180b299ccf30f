//! The node's rotating key bundles (`protocols/data-v1.md` §4.1): one current bundle, which peers
//! and `/api/server-info` are given and sessions are opened with, and the bundles it replaced, which
//! still answer handshakes that name them until they expire. A bundle is replaced `rotation` after it
//! was created and accepted for `grace` after that.
//!
//! All of it lives in `DATA_DIR/bundle.key` (mode 0600), rewritten at every rotation.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    BundleId, Error,
    bundle::{FILE_NAME, Keys, VERSION},
};
use crate::identity::{BadHex, Identity, hex_array};

/// Replaced bundles kept at most (older ones are forgotten even if not expired yet).
pub const MAX_RETIRED: usize = 8;

/// When bundles rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Age at which the current bundle is replaced; `None`: never.
    pub rotation: Option<Duration>,
    /// How long a replaced bundle still answers handshakes.
    pub grace: Duration,
}

impl Default for Schedule {
    /// Weekly, with a week of grace (the `data.key_rotation_secs` / `data.key_grace_secs` defaults).
    fn default() -> Self {
        Self {
            rotation: Some(Duration::from_secs(7 * 24 * 3600)),
            grace: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One bundle in the ring, with its schedule (unix seconds).
#[derive(Clone)]
pub struct Entry {
    pub keys: Arc<Keys>,
    /// Counts up from 1 with every rotation.
    pub generation: u32,
    pub valid_after: u64,
    /// When it is (or was) replaced; `None` for a current bundle that never rotates.
    pub rotates_at: Option<u64>,
    /// When handshakes naming it stop being answered; `None`: never.
    pub expires_at: Option<u64>,
}

struct Ring {
    current: Entry,
    /// Newest first.
    retired: Vec<Entry>,
}

/// The rotating bundles of one identity.
pub struct KeyRing {
    schedule: Schedule,
    path: Option<PathBuf>,
    ring: RwLock<Ring>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u8,
    #[serde(default = "first_generation")]
    generation: u32,
    created_at: u64,
    x25519_secret: String,
    ml_kem_seed: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<RetiredFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredFile {
    generation: u32,
    created_at: u64,
    retired_at: u64,
    x25519_secret: String,
    ml_kem_seed: String,
}

fn first_generation() -> u32 {
    1
}

impl KeyRing {
    /// A ring of fresh keys that is not saved anywhere (tests, in-process simulation).
    pub fn generate(identity: &Identity, schedule: Schedule) -> Self {
        let keys = Keys::generate(identity);
        Self {
            ring: RwLock::new(Ring {
                current: entry(keys, 1, &schedule),
                retired: Vec::new(),
            }),
            schedule,
            path: None,
        }
    }

    /// Loads the ring from `dir`, or creates and saves a new one. Bundles are re-signed at load,
    /// so a changed identity cannot leave a stale signature behind. A current bundle past its
    /// rotation time is replaced right away.
    pub fn load_or_create(
        dir: &Path,
        identity: &Identity,
        schedule: Schedule,
    ) -> Result<Self, Error> {
        let path = dir.join(FILE_NAME);
        let bad = |reason: String| Error::KeyFile {
            path: path.clone(),
            reason,
        };
        let ring = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: File = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
                if file.version != VERSION {
                    return Err(bad(format!("unknown version {}", file.version)));
                }
                let keys = decode(
                    identity,
                    file.created_at,
                    &file.x25519_secret,
                    &file.ml_kem_seed,
                )
                .map_err(|e| bad(e.to_string()))?;
                let mut retired = Vec::new();
                for r in &file.retired {
                    let keys = decode(identity, r.created_at, &r.x25519_secret, &r.ml_kem_seed)
                        .map_err(|e| bad(format!("retired generation {}: {e}", r.generation)))?;
                    retired.push(Entry {
                        keys: Arc::new(keys),
                        generation: r.generation,
                        valid_after: r.created_at,
                        rotates_at: Some(r.retired_at),
                        expires_at: Some(r.retired_at + schedule.grace.as_secs()),
                    });
                }
                Ring {
                    current: entry(keys, file.generation, &schedule),
                    retired,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ring {
                current: entry(Keys::generate(identity), 1, &schedule),
                retired: Vec::new(),
            },
            Err(e) => return Err(bad(e.to_string())),
        };
        let this = Self {
            schedule,
            path: Some(path),
            ring: RwLock::new(ring),
        };
        if !this.rotate_if_due(identity, crate::time::unix_secs())? {
            this.save()?;
        }
        Ok(this)
    }

    /// The current bundle's keys.
    pub fn current(&self) -> Arc<Keys> {
        self.read().current.keys.clone()
    }

    /// The keys of the bundle named `id`, if it is current (always answered, even while a
    /// rotation is overdue) or replaced but not expired at `now`.
    pub fn find(&self, id: &BundleId, now: u64) -> Option<Arc<Keys>> {
        self.entries(now)
            .into_iter()
            .find(|e| e.keys.bundle().id() == *id)
            .map(|e| e.keys)
    }

    /// The current bundle and the unexpired replaced ones, newest first.
    pub fn entries(&self, now: u64) -> Vec<Entry> {
        let ring = self.read();
        std::iter::once(ring.current.clone())
            .chain(
                ring.retired
                    .iter()
                    .filter(|e| e.expires_at.is_none_or(|t| now < t))
                    .cloned(),
            )
            .collect()
    }

    /// When the current bundle is due to be replaced (unix seconds), if ever.
    pub fn next_rotation(&self) -> Option<u64> {
        self.read().current.rotates_at
    }

    /// Replaces the current bundle if it is due at `now`; drops expired ones. Returns whether a
    /// new bundle was made (the caller republishes it).
    pub fn rotate_if_due(&self, identity: &Identity, now: u64) -> Result<bool, Error> {
        {
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            ring.retired
                .retain(|e| e.expires_at.is_none_or(|t| now < t));
            let due = ring.current.rotates_at.is_some_and(|t| now >= t);
            if !due {
                return Ok(false);
            }
            let next = entry(
                Keys::generate(identity),
                ring.current.generation.wrapping_add(1),
                &self.schedule,
            );
            let mut old = std::mem::replace(&mut ring.current, next);
            old.rotates_at = Some(now);
            old.expires_at = Some(now + self.schedule.grace.as_secs());
            ring.retired.insert(0, old);
            ring.retired.truncate(MAX_RETIRED);
        }
        self.save()?;
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = {
            let ring = self.read();
            let c = &ring.current;
            File {
                version: VERSION,
                generation: c.generation,
                created_at: c.valid_after,
                x25519_secret: hex::encode(c.keys.x25519_secret()),
                ml_kem_seed: hex::encode(c.keys.kem_seed()),
                retired: ring
                    .retired
                    .iter()
                    .map(|e| RetiredFile {
                        generation: e.generation,
                        created_at: e.valid_after,
                        retired_at: e.rotates_at.unwrap_or(e.valid_after),
                        x25519_secret: hex::encode(e.keys.x25519_secret()),
                        ml_kem_seed: hex::encode(e.keys.kem_seed()),
                    })
                    .collect(),
            }
        };
        let text = format!(
            "# CommuCat data-protocol key bundle secrets (protocols/data-v1.md §4). Keep private.\n{}",
            toml::to_string(&file).expect("plain values")
        );
        crate::fsutil::write_private(path, text.as_bytes()).map_err(|e| Error::KeyFile {
            path: path.clone(),
            reason: e.to_string(),
        })
    }
}

fn entry(keys: Keys, generation: u32, schedule: &Schedule) -> Entry {
    let created = keys.bundle().created_at();
    let rotates_at = schedule.rotation.map(|r| created + r.as_secs());
    Entry {
        keys: Arc::new(keys),
        generation,
        valid_after: created,
        rotates_at,
        expires_at: rotates_at.map(|t| t + schedule.grace.as_secs()),
    }
}

fn decode(identity: &Identity, created_at: u64, x25519: &str, kem: &str) -> Result<Keys, BadHex> {
    let x = hex_array::<32>("x25519_secret", x25519)?;
    let k = hex_array::<64>("ml_kem_seed", kem)?;
    Ok(Keys::from_secrets(identity, created_at, x, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rotation: u64, grace: u64) -> Schedule {
        Schedule {
            rotation: Some(Duration::from_secs(rotation)),
            grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn bundles_rotate_and_old_ones_answer_until_they_expire() {
        let id = Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), &id, schedule(100, 50)).unwrap();
        let first = ring.current();
        let t0 = first.bundle().created_at();
        let first_id = first.bundle().id();
        assert_eq!(ring.next_rotation(), Some(t0 + 100));
        assert!(!ring.rotate_if_due(&id, t0 + 99).unwrap(), "not due yet");

        assert!(ring.rotate_if_due(&id, t0 + 100).unwrap());
        let second = ring.current();
        assert_ne!(second.bundle().id(), first_id);
        assert_ne!(second.x25519_secret(), first.x25519_secret());
        let entries = ring.entries(t0 + 100);
        assert_eq!(
            entries.iter().map(|e| e.generation).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(entries[1].rotates_at, Some(t0 + 100));
        assert_eq!(entries[1].expires_at, Some(t0 + 150));
        assert!(ring.find(&first_id, t0 + 149).is_some(), "within grace");
        assert!(ring.find(&first_id, t0 + 150).is_none(), "expired");

        // The file carries the whole ring across restarts.
        let again = KeyRing::load_or_create(dir.path(), &id, schedule(1_000_000, 50)).unwrap();
        assert_eq!(
            again.current().bundle().as_bytes(),
            second.bundle().as_bytes()
        );
        assert!(again.find(&first_id, t0 + 149).is_some());
    }

    #[test]
    fn an_old_single_bundle_file_still_loads() {
        let id = Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::generate(&id);
        let text = format!(
            "version = 1\ncreated_at = {}\nx25519_secret = \"{}\"\nml_kem_seed = \"{}\"\n",
            keys.bundle().created_at(),
            hex::encode(keys.x25519_secret()),
            hex::encode(keys.kem_seed())
        );
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let ring = KeyRing::load_or_create(dir.path(), &id, schedule(1_000_000, 10)).unwrap();
        assert_eq!(ring.current().bundle().as_bytes(), keys.bundle().as_bytes());
        assert_eq!(ring.entries(0)[0].generation, 1);
    }
}
