//! Devices paired with this node (`devices` tree, `protocols/pairing-v1.md`): light clients that
//! redeemed a pairing code, by device id (the client id of the assist token they got).

use serde::{Deserialize, Serialize};

use super::{Error, Store};
use crate::wire::ClientId;

/// Name of the tree.
pub const DEVICES_TREE: &str = "devices";
/// Devices paired at most at once.
pub const MAX_DEVICES: usize = 1000;

/// One paired device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Also the client id of its assist token (what signaling and the gateway know it as).
    pub id: ClientId,
    /// What the person called it when claiming the code, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its Ed25519 key, hex.
    pub device_public: String,
    /// Unix seconds.
    pub paired_at: u64,
    /// Unix seconds: when its certificate and token expire.
    pub expires_at: u64,
    /// The device that invited it (`POST /api/pairing`); absent when the node's owner did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<ClientId>,
}

/// The `devices` tree: JSON values by device id.
#[derive(Clone)]
pub struct Devices(sled::Tree);

impl Devices {
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        Ok(Self(store.db.open_tree(DEVICES_TREE)?))
    }

    /// Records a newly paired device, unless [`MAX_DEVICES`] are.
    pub fn add(&self, d: &Device) -> Result<(), Error> {
        if self.0.len() >= MAX_DEVICES {
            return Err(Error::Full("the list of paired devices", MAX_DEVICES));
        }
        self.0
            .insert(d.id.0, serde_json::to_vec(d).expect("plain values"))?;
        self.0.flush()?;
        Ok(())
    }

    /// Every paired device, oldest first.
    pub fn all(&self) -> Result<Vec<Device>, Error> {
        let mut out = self
            .0
            .iter()
            .map(|kv| {
                serde_json::from_slice::<Device>(&kv?.1).map_err(|_| Error::Corrupt("devices"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|d| d.paired_at);
        Ok(out)
    }

    /// Forgets a device; whether it was there.
    pub fn remove(&self, id: &ClientId) -> Result<bool, Error> {
        let had = self.0.remove(id.0)?.is_some();
        self.0.flush()?;
        Ok(had)
    }
}
