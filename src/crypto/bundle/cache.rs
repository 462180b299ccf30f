//! Peers' bundles, verified once (`protocols/data-v2.md` §4): checking a bundle (two ML-DSA-65
//! and two Ed25519 signatures) costs more than the rest of a version 2 handshake, so a bundle
//! seen again — in the store, in a HELLO's BUNDLE, in a presence record — is taken from here when
//! its bytes are the ones verified before.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use libp2p::PeerId;

use super::{Bundle, BundleId};
use crate::crypto::Error;

/// Peers whose latest verified bundle is kept; past it an arbitrary one is forgotten (and
/// verified again when it comes back).
pub const MAX_CACHED_BUNDLES: usize = 4096;

/// The latest verified bundle of each peer, at most [`MAX_CACHED_BUNDLES`].
#[derive(Default)]
pub struct Cache {
    peers: Mutex<HashMap<PeerId, Bundle>>,
}

impl Cache {
    /// `peer`'s bundle `id`, if it is the one verified last.
    pub fn get(&self, peer: &PeerId, id: &BundleId) -> Option<Bundle> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.get(peer).filter(|b| b.id() == *id).cloned()
    }

    /// `peer`'s bundle if these very bytes were verified before.
    pub fn hit(&self, bytes: &[u8], peer: &PeerId) -> Option<Bundle> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.get(peer).filter(|b| b.as_bytes() == bytes).cloned()
    }

    /// `bytes` as `peer`'s bundle: from the cache when these very bytes were verified before,
    /// else verified ([`Bundle::verify`]) and kept.
    pub fn verify(&self, bytes: &[u8], peer: &PeerId) -> Result<Bundle, Error> {
        if let Some(b) = self.hit(bytes, peer) {
            return Ok(b);
        }
        let b = Bundle::verify(bytes, peer)?;
        self.insert(b.clone());
        Ok(b)
    }

    /// Keeps `bundle` (verified) as its owner's latest.
    pub fn insert(&self, bundle: Bundle) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.len() >= MAX_CACHED_BUNDLES
            && !peers.contains_key(&bundle.peer_id())
            && let Some(victim) = peers.keys().next().copied()
        {
            peers.remove(&victim);
        }
        peers.insert(bundle.peer_id(), bundle);
    }

    /// Forgets `peer`'s bundle (it answered STALE_BUNDLE: it holds a newer one).
    pub fn remove(&self, peer: &PeerId) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
    }

    pub fn len(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::bundle::Keys, identity::Identity};

    #[test]
    fn a_bundle_is_verified_once_and_forged_bytes_still_fail() {
        let alice = Identity::generate();
        let keys = Keys::generate(&alice);
        let bytes = keys.bundle().as_bytes().to_vec();
        let cache = Cache::default();
        assert!(cache.get(&alice.peer_id(), &keys.bundle().id()).is_none());
        let b = cache.verify(&bytes, &alice.peer_id()).unwrap();
        assert_eq!(b.id(), keys.bundle().id());
        assert_eq!(cache.get(&alice.peer_id(), &b.id()).unwrap().id(), b.id());
        assert!(
            cache.get(&alice.peer_id(), &[0; 16]).is_none(),
            "another id"
        );
        // A tampered copy of a cached bundle is not taken from the cache.
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(cache.verify(&forged, &alice.peer_id()).is_err());
        // Nor is the same bundle for another peer.
        let mallory = Identity::generate();
        assert!(cache.verify(&bytes, &mallory.peer_id()).is_err());
        cache.remove(&alice.peer_id());
        assert!(cache.is_empty());
    }
}
