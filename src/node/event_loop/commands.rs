//! Answers to [`Command`]s from clients: status, peers, DHT lookups and dials. Lookups and dials
//! are started here and finished by the swarm events in the parent module.

use tokio::time::Instant;

use libp2p::{
    Multiaddr, PeerId, kad,
    swarm::dial_opts::{DialOpts, PeerCondition},
};
use tokio::sync::oneshot;

use super::{
    EventLoop,
    queries::{PendingDial, PendingFind},
};
use crate::{
    dht,
    node::{
        Error,
        command::{Command, Connected, FindSource, FoundPeer, PeerInfo, Status},
    },
};

impl EventLoop {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::RoutingTable { reply } => {
                let peers = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
            Command::FindPeer { peer, reply } => self.find_peer(peer, reply),
            Command::Connect { peer, addrs, reply } => self.connect(peer, addrs, reply),
            Command::GetPresence { peer, reply } => self.lookup_presence(peer, reply),
            Command::PutName { handle, reply } => self.put_name(handle, reply),
            Command::ResolveName {
                handle,
                fresh,
                reply,
            } => self.resolve_name(handle, fresh, reply),
        }
    }

    fn status(&mut self) -> Status {
        let routing_table_size = self.routing_table_size();
        Status {
            peer_id: *self.swarm.local_peer_id(),
            role: self.role,
            agent_version: crate::node::agent_version(),
            listen_addrs: self.swarm.listeners().cloned().collect(),
            external_addrs: self.swarm.external_addresses().cloned().collect(),
            reachability: self.traversal.nat.reachability(),
            relay_reservations: self.traversal.relays.reservations(),
            kad_mode: self.swarm.behaviour().kad.mode().to_string(),
            connected_peers: self.swarm.connected_peers().count(),
            connections: self
                .swarm
                .network_info()
                .connection_counters()
                .num_established(),
            routing_table_size,
            peer_book_size: self.conn.peer_book.len(),
            uptime_secs: self.started.elapsed().as_secs(),
            name: self.names.claimed().cloned(),
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .conn
            .peers
            .iter()
            .map(|(peer, s)| PeerInfo {
                peer_id: *peer,
                connections: s.connections.values().cloned().collect(),
                rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                agent_version: s.agent_version.clone(),
                protocols: s.protocols.clone(),
                listen_addrs: s.listen_addrs.clone(),
            })
            .collect();
        out.sort_by_key(|p| p.peer_id.to_base58());
        out
    }

    fn find_peer(&mut self, target: PeerId, reply: oneshot::Sender<Result<FoundPeer, Error>>) {
        let Some(reply) = self.queries.room_for_find(reply) else {
            return;
        };
        // The target is at distance 0 from its own key: asking for the single closest peer ends
        // the query as soon as the target itself answers, instead of converging on k peers.
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_n_closest_peers(target, dht::FIND_PEER_RESULTS);
        self.queries.add_find(
            id,
            PendingFind {
                target,
                started: Instant::now(),
                reply,
            },
        );
    }

    /// Answers a lookup from the query's closest peers; if the DHT does not know the target but we
    /// are connected to it (a DHT client, say), from what identify told us.
    pub(super) fn finish_find(&mut self, id: kad::QueryId, peers: Vec<kad::PeerInfo>) {
        let Some(pending) = self.queries.take_find(&id) else {
            return;
        };
        let duration_ms = pending
            .started
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        // The query reached the target. Its addresses come with the answers of other peers, or,
        // when the target was already in our routing table, from there.
        let from_dht = peers
            .into_iter()
            .find(|p| p.peer_id == pending.target)
            .map(|info| match info.addrs.is_empty() {
                false => info.addrs,
                true => self.routing_table_addrs(&pending.target),
            })
            .filter(|addrs| !addrs.is_empty())
            .map(|addrs| (addrs, FindSource::Dht));
        let from_connection = || {
            let state = self.conn.peers.get(&pending.target)?;
            let addrs: Vec<Multiaddr> = if state.listen_addrs.is_empty() {
                state
                    .connections
                    .values()
                    .map(|c| c.remote_addr.clone())
                    .collect()
            } else {
                state.listen_addrs.clone()
            };
            Some((addrs, FindSource::Connected))
        };
        let result = match from_dht.or_else(from_connection) {
            Some((addrs, source)) => {
                for addr in &addrs {
                    self.swarm.add_peer_address(pending.target, addr.clone());
                }
                Ok(FoundPeer {
                    peer_id: pending.target,
                    addrs,
                    source,
                    duration_ms,
                })
            }
            None => Err(Error::NotFound(pending.target)),
        };
        let _ = pending.reply.send(result);
    }

    fn routing_table_addrs(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(*peer) else {
            return Vec::new();
        };
        bucket
            .iter()
            .find(|e| e.node.key.preimage() == peer)
            .map(|e| e.node.value.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn connect(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<Connected, Error>>,
    ) {
        if let Some(conn) = self
            .conn
            .peers
            .get(&peer)
            .and_then(|s| s.connections.values().next())
        {
            let _ = reply.send(Ok(Connected {
                peer_id: peer,
                remote_addr: conn.remote_addr.clone(),
                already_connected: true,
            }));
            return;
        }
        let Some(reply) = self.queries.room_for_dial(reply) else {
            return;
        };
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.queries.add_dial(id, PendingDial { peer, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Dial(e.to_string())));
            }
        }
    }
}
