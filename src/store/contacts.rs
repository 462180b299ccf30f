//! The address book (`contacts` tree, `protocols/contacts-v1.md` §1): labels a person chose for
//! peers, each with the keys seen first for it — pinned — and whether the person compared safety
//! numbers. Another key seen later for a contact is kept beside the pinned one, and sending to the
//! contact is refused until the person confirms it.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{Error, Store};
use crate::{identity::Binding, names::Handle};

/// Name of the tree.
pub const CONTACTS_TREE: &str = "contacts";
/// Name of the index of contacts by pinned peer (`peer_key(peer) ‖ label` → nothing): what
/// every send and every delivery session asks, without reading the whole book.
pub const CONTACT_PEERS_TREE: &str = "contact_peers";
/// Contacts one node keeps at most.
pub const MAX_CONTACTS: usize = 10_000;
/// Characters in a label at most.
pub const MAX_LABEL_CHARS: usize = 64;
/// Keys a contact remembers as replaced (confirmed away from); the oldest are forgotten.
pub const MAX_RETIRED_KEYS: usize = 16;

/// A name for a contact, chosen by the person: 1–64 characters, no control characters, no
/// surrounding spaces, neither an `@handle` nor a PeerId (so that `send <label>` is never
/// ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLabel {
    #[error("a contact label must have 1 to {MAX_LABEL_CHARS} characters")]
    Length,
    #[error("a contact label cannot contain control characters or begin or end with a space")]
    Characters,
    #[error("a contact label cannot begin with `@` (that names a handle)")]
    Handle,
    #[error("a contact label cannot be a peer id")]
    PeerId,
}

impl Label {
    pub fn parse(s: &str) -> Result<Self, BadLabel> {
        let n = s.chars().count();
        if n == 0 || n > MAX_LABEL_CHARS {
            return Err(BadLabel::Length);
        }
        if s.trim() != s || s.chars().any(char::is_control) {
            return Err(BadLabel::Characters);
        }
        if s.starts_with('@') {
            return Err(BadLabel::Handle);
        }
        if s.parse::<PeerId>().is_ok() {
            return Err(BadLabel::PeerId);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Label {
    type Err = BadLabel;
    fn from_str(s: &str) -> Result<Self, BadLabel> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Label {
    type Error = BadLabel;
    fn try_from(s: String) -> Result<Self, BadLabel> {
        Self::parse(&s)
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

/// Whether a contact's pinned keys were compared, or another key showed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// The person compared safety numbers and confirmed.
    Verified,
    /// Pinned on first sight, never compared.
    Unverified,
    /// Another key was seen for the contact: sending is refused until the person confirms.
    KeyChanged,
}

/// One contact as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub label: Label,
    /// The handle it was added by, checked again on every send to it.
    pub handle: Option<Handle>,
    /// The keys pinned: the first seen, or the last the person confirmed.
    pub pinned: Binding,
    pub verified: bool,
    /// Keys seen for the contact since that differ from the pinned ones, not yet confirmed.
    pub changed: Option<Binding>,
    /// Fingerprints ([`fingerprint`]) of keys once pinned and since replaced by the person: a
    /// DHT lookup that still shows one is old news, not a change (records live until they expire).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// Unix seconds.
    pub added_at: u64,
}

/// Where keys were seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In a session: what messages would be sent under. Anything but the pinned keys is a change.
    Session,
    /// In a DHT record (a name record, a presence record), which may be older than what the person
    /// already confirmed: a retired key is not a change.
    Lookup,
}

/// SHA-256 of the PeerId bytes and the ML-DSA-65 key, hex: what identifies a pair of keys.
pub fn fingerprint(b: &Binding) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(
        Sha256::new()
            .chain_update(b.peer_id.to_bytes())
            .chain_update(&b.ml_dsa_public)
            .finalize(),
    )
}

impl Contact {
    pub fn new(label: Label, handle: Option<Handle>, pinned: Binding) -> Self {
        Self {
            label,
            handle,
            pinned,
            verified: false,
            changed: None,
            retired: Vec::new(),
            added_at: crate::time::unix_secs(),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.pinned.peer_id
    }

    pub fn trust(&self) -> Trust {
        match (&self.changed, self.verified) {
            (Some(_), _) => Trust::KeyChanged,
            (None, true) => Trust::Verified,
            (None, false) => Trust::Unverified,
        }
    }
}

/// Both identity keys are the same (the PeerId embeds the Ed25519 key).
pub fn same_keys(a: &Binding, b: &Binding) -> bool {
    a.peer_id == b.peer_id && a.ml_dsa_public == b.ml_dsa_public
}

/// Why a contact could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("there is already a contact called {0}")]
    Exists(Label),
    #[error("the address book is full ({MAX_CONTACTS} contacts)")]
    Full,
    #[error(transparent)]
    Store(#[from] Error),
}

/// The `contacts` tree (JSON values by label) and its index by peer.
#[derive(Clone)]
pub struct Contacts(sled::Tree, sled::Tree);

fn index_key(peer: &PeerId, label: &Label) -> Vec<u8> {
    [super::peer_key(peer), label.as_str().as_bytes().to_vec()].concat()
}

impl Contacts {
    /// Opens the book; an index that does not match it (an interrupted write) is built again.
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        let book = Self(
            store.db.open_tree(CONTACTS_TREE)?,
            store.db.open_tree(CONTACT_PEERS_TREE)?,
        );
        if book.1.len() != book.0.len() {
            book.1.clear()?;
            for c in book.all()? {
                book.1.insert(index_key(&c.peer_id(), &c.label), &[])?;
            }
        }
        Ok(book)
    }

    fn decode(v: &[u8]) -> Result<Contact, Error> {
        serde_json::from_slice(v).map_err(|_| Error::Corrupt("contacts"))
    }

    /// Writes `c`, whose pinned peer was `old_peer` before (a confirmation may change it).
    fn put(&self, c: &Contact, old_peer: PeerId) -> Result<(), Error> {
        // Index first: a stale index entry is filtered out when read, a missing one is not.
        self.1.insert(index_key(&c.peer_id(), &c.label), &[])?;
        let v = serde_json::to_vec(c).expect("contacts serialise");
        self.0.insert(c.label.as_str(), v)?;
        if old_peer != c.peer_id() {
            self.1.remove(index_key(&old_peer, &c.label))?;
        }
        self.0.flush()?;
        Ok(())
    }

    /// Adds `contact` under a label not yet used.
    pub fn add(&self, contact: &Contact) -> Result<(), AddError> {
        if self.0.len() >= MAX_CONTACTS {
            return Err(AddError::Full);
        }
        let v = serde_json::to_vec(contact).expect("contacts serialise");
        let key = index_key(&contact.peer_id(), &contact.label);
        let fresh = !self.1.contains_key(&key).map_err(Error::from)?;
        self.1.insert(&key, &[]).map_err(Error::from)?;
        let added = self
            .0
            .compare_and_swap(contact.label.as_str(), None::<&[u8]>, Some(v))
            .map_err(Error::from)?;
        if added.is_err() {
            if fresh {
                self.1.remove(&key).map_err(Error::from)?;
            }
            return Err(AddError::Exists(contact.label.clone()));
        }
        self.0.flush().map_err(Error::from)?;
        Ok(())
    }

    pub fn get(&self, label: &Label) -> Result<Option<Contact>, Error> {
        self.0
            .get(label.as_str())?
            .map(|v| Self::decode(&v))
            .transpose()
    }

    /// Every contact, by label.
    pub fn all(&self) -> Result<Vec<Contact>, Error> {
        self.0.iter().map(|kv| Self::decode(&kv?.1)).collect()
    }

    /// Whether a contact called `label` was there.
    pub fn remove(&self, label: &Label) -> Result<bool, Error> {
        let old = self.0.remove(label.as_str())?;
        if let Some(c) = old.as_deref().map(Self::decode).transpose()? {
            self.1.remove(index_key(&c.peer_id(), label))?;
        }
        self.0.flush()?;
        Ok(old.is_some())
    }

    /// The contacts whose pinned keys are `peer`'s (through the index).
    pub fn of_peer(&self, peer: &PeerId) -> Result<Vec<Contact>, Error> {
        let prefix = super::peer_key(peer);
        let mut out = Vec::new();
        for kv in self.1.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let Some(label) = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|l| Label::parse(l).ok())
            else {
                continue;
            };
            if let Some(c) = self.get(&label)?.filter(|c| c.peer_id() == *peer) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The contact added by `handle`, if any.
    pub fn of_handle(&self, handle: &Handle) -> Result<Option<Contact>, Error> {
        Ok(self
            .all()?
            .into_iter()
            .find(|c| c.handle.as_ref() == Some(handle)))
    }

    /// Records that `seen` are the keys now shown for the contact called `label` (by its handle,
    /// or by a session or presence record of its peer): when they differ from the pinned ones the
    /// contact becomes [`Trust::KeyChanged`]. Returns the contact as it now is.
    pub fn observe(
        &self,
        label: &Label,
        seen: &Binding,
        how: Seen,
    ) -> Result<Option<Contact>, Error> {
        let Some(mut c) = self.get(label)? else {
            return Ok(None);
        };
        if how == Seen::Lookup && c.retired.contains(&fingerprint(seen)) {
            return Ok(Some(c));
        }
        if !same_keys(&c.pinned, seen) && c.changed.as_ref().is_none_or(|k| !same_keys(k, seen)) {
            c.changed = Some(seen.clone());
            self.put(&c, c.peer_id())?;
        }
        Ok(Some(c))
    }

    /// [`Self::observe`] for every contact of `peer`; the contacts that now show a changed key.
    pub fn observe_peer(
        &self,
        peer: &PeerId,
        seen: &Binding,
        how: Seen,
    ) -> Result<Vec<Contact>, Error> {
        let mut changed = Vec::new();
        for c in self.of_peer(peer)? {
            if let Some(c) = self.observe(&c.label, seen, how)?
                && c.changed.is_some()
            {
                changed.push(c);
            }
        }
        Ok(changed)
    }

    /// The person confirmed: the changed keys (if any) become the pinned ones, and the contact is
    /// verified.
    pub fn confirm(&self, label: &Label) -> Result<Option<Contact>, Error> {
        let Some(mut c) = self.get(label)? else {
            return Ok(None);
        };
        let old_peer = c.peer_id();
        if let Some(k) = c.changed.take() {
            c.retired.push(fingerprint(&c.pinned));
            if c.retired.len() > MAX_RETIRED_KEYS {
                c.retired.remove(0);
            }
            c.pinned = k;
        }
        c.verified = true;
        self.put(&c, old_peer)?;
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn labels_are_never_handles_or_peer_ids() {
        assert!(Label::parse("Bob Smith").is_ok());
        assert_eq!(Label::parse(""), Err(BadLabel::Length));
        assert_eq!(Label::parse(&"x".repeat(65)), Err(BadLabel::Length));
        assert_eq!(Label::parse(" bob"), Err(BadLabel::Characters));
        assert_eq!(Label::parse("bo\nb"), Err(BadLabel::Characters));
        assert_eq!(Label::parse("@bob"), Err(BadLabel::Handle));
        let p = PeerId::random().to_string();
        assert_eq!(Label::parse(&p), Err(BadLabel::PeerId));
    }

    #[test]
    fn a_new_key_is_held_apart_until_confirmed() {
        let store = Store::temporary().unwrap();
        let book = store.contacts().unwrap();
        let (old, new) = (Identity::generate(), Identity::generate());
        let bob = Label::parse("bob").unwrap();
        book.add(&Contact::new(bob.clone(), None, old.binding().clone()))
            .unwrap();
        assert!(matches!(
            book.add(&Contact::new(bob.clone(), None, new.binding().clone())),
            Err(AddError::Exists(_))
        ));
        assert_eq!(book.get(&bob).unwrap().unwrap().trust(), Trust::Unverified);
        book.observe(&bob, old.binding(), Seen::Session).unwrap();
        assert_eq!(book.get(&bob).unwrap().unwrap().trust(), Trust::Unverified);
        let c = book
            .observe(&bob, new.binding(), Seen::Session)
            .unwrap()
            .unwrap();
        assert_eq!(c.trust(), Trust::KeyChanged);
        assert_eq!(c.peer_id(), old.peer_id(), "the pinned key stays");
        let c = book.confirm(&bob).unwrap().unwrap();
        assert_eq!((c.trust(), c.peer_id()), (Trust::Verified, new.peer_id()));
        assert!(book.of_peer(&old.peer_id()).unwrap().is_empty());
        assert_eq!(book.of_peer(&new.peer_id()).unwrap().len(), 1);
        // A record in the DHT that still shows the replaced keys is old news; a session under
        // them is not.
        let c = book
            .observe(&bob, old.binding(), Seen::Lookup)
            .unwrap()
            .unwrap();
        assert_eq!(c.trust(), Trust::Verified);
        let c = book
            .observe(&bob, old.binding(), Seen::Session)
            .unwrap()
            .unwrap();
        assert_eq!(c.trust(), Trust::KeyChanged);
        assert!(book.remove(&bob).unwrap());
        assert!(book.all().unwrap().is_empty());
    }
}
