//! The handle everything outside the event loop uses to talk to the node (control API, CLI,
//! tests, simnet). Cheap to clone; each call is a command with a `oneshot` reply.

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{
    Error, Event,
    command::{Command, Connected, FoundPeer, PeerInfo, ResolvedName, Status},
};
use crate::{
    broadcast::{Broadcast, Subscription},
    names::Handle,
};

#[derive(Clone)]
pub struct Client {
    pub(crate) peer_id: PeerId,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: Broadcast<Event>,
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Node events from now on. A subscriber that falls more than
    /// [`super::event::EVENT_BUFFER`] events behind is told how many it missed.
    pub fn subscribe(&self) -> Subscription<Event> {
        self.events.subscribe()
    }

    pub async fn status(&self) -> Result<Status, Error> {
        self.request(|reply| Command::Status { reply }).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.request(|reply| Command::Peers { reply }).await
    }

    /// The peers in the Kademlia routing table, closest bucket first.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, Error> {
        self.request(|reply| Command::RoutingTable { reply }).await
    }

    /// Looks `peer` up with a Kademlia query; if the DHT does not know it but we are connected to
    /// it, answers with the addresses it announced to us; failing both, with the addresses in its
    /// signed presence record.
    pub async fn find_peer(&self, peer: PeerId) -> Result<FoundPeer, Error> {
        let started = tokio::time::Instant::now();
        match self
            .request(|reply| Command::FindPeer { peer, reply })
            .await?
        {
            Err(Error::NotFound(_)) => match self.presence(peer).await? {
                Some(p) if !p.addrs.is_empty() => Ok(FoundPeer {
                    peer_id: peer,
                    addrs: p.addrs,
                    source: super::FindSource::Presence,
                    duration_ms: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
                }),
                _ => Err(Error::NotFound(peer)),
            },
            other => other,
        }
    }

    /// The valid presence record of `peer` with the highest sequence number, if the DHT has one.
    pub async fn presence(
        &self,
        peer: PeerId,
    ) -> Result<Option<crate::dht::record::Presence>, Error> {
        self.request(|reply| Command::GetPresence { peer, reply })
            .await?
    }

    /// Who holds `handle` (`protocols/names-v1.md` §6): the holder's record, `None` for a free
    /// name (or one whose look-alike is held: a message for `a1ice` must not reach `alice`),
    /// [`Error::NameConflict`] when the DHT shows several holders. Cached until the answer's record
    /// expires.
    pub async fn resolve_name(&self, handle: Handle) -> Result<Option<ResolvedName>, Error> {
        self.lookup_name(handle, false).await
    }

    /// [`Self::resolve_name`] asked of the DHT, not the cache: what a check of a pinned contact
    /// needs, as a cached answer can predate a release and a new claim.
    pub async fn resolve_name_fresh(&self, handle: Handle) -> Result<Option<ResolvedName>, Error> {
        self.lookup_name(handle, true).await
    }

    async fn lookup_name(
        &self,
        handle: Handle,
        fresh: bool,
    ) -> Result<Option<ResolvedName>, Error> {
        let held = self
            .request(|reply| Command::ResolveName {
                handle: handle.clone(),
                fresh,
                reply,
            })
            .await??;
        Ok(held.filter(|r| r.handle == handle))
    }

    /// Claims `handle` for this node unless another holds it ([`Error::NameTaken`], asked of the
    /// DHT, not the cache); the node publishes the record and republishes it while it runs, across
    /// restarts too.
    pub async fn claim_name(&self, handle: Handle) -> Result<(), Error> {
        let fresh = self
            .request(|reply| Command::ResolveName {
                handle: handle.clone(),
                fresh: true,
                reply,
            })
            .await?;
        match fresh {
            Ok(Some(r)) if r.peer_id != self.peer_id => {
                return Err(Error::NameTaken {
                    handle,
                    owner: r.peer_id,
                });
            }
            Ok(_) => {}
            Err(Error::NameConflict { owners, handle }) => {
                return Err(match owners.iter().find(|o| **o != self.peer_id) {
                    Some(&owner) => Error::NameTaken { handle, owner },
                    None => Error::NameConflict { owners, handle },
                });
            }
            Err(e) => return Err(e),
        }
        let handle = Some(handle);
        self.request(|reply| Command::PutName { handle, reply })
            .await?
    }

    /// Gives the claimed name up: a released record replaces the claim in the DHT.
    pub async fn release_name(&self) -> Result<(), Error> {
        self.request(|reply| Command::PutName {
            handle: None,
            reply,
        })
        .await?
    }

    /// Connects to `peer`, at `addrs` if given, else at the addresses a DHT lookup finds.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<Connected, Error> {
        let addrs = if addrs.is_empty() {
            self.find_peer(peer).await?.addrs
        } else {
            addrs
        };
        self.request(|reply| Command::Connect { peer, addrs, reply })
            .await?
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}
