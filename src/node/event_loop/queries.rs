//! Lookups and dials clients are waiting for: at most [`MAX_PENDING_FINDS`] and
//! [`MAX_PENDING_DIALS`] at once (more get [`Error::Busy`]); each answered once, when its query or
//! connection ends.

use std::{collections::HashMap, time::Duration};

use libp2p::{PeerId, kad, swarm::ConnectionId};
use tokio::{sync::oneshot, time::Instant};

use super::{MAX_PENDING_DIALS, MAX_PENDING_FINDS};
use crate::node::{Connected, Error, FoundPeer};

pub(super) struct PendingFind {
    pub(super) target: PeerId,
    pub(super) started: Instant,
    pub(super) reply: oneshot::Sender<Result<FoundPeer, Error>>,
}

pub(super) struct PendingDial {
    pub(super) peer: PeerId,
    pub(super) reply: oneshot::Sender<Result<Connected, Error>>,
}

/// The pending lookups (by Kademlia query) and dials (by connection).
#[derive(Default)]
pub(super) struct Queries {
    finds: HashMap<kad::QueryId, PendingFind>,
    dials: HashMap<ConnectionId, PendingDial>,
}

impl Queries {
    /// Whether another lookup may start; if not, `reply` is answered `Busy`.
    pub(super) fn room_for_find(
        &self,
        reply: oneshot::Sender<Result<FoundPeer, Error>>,
    ) -> Option<oneshot::Sender<Result<FoundPeer, Error>>> {
        if self.finds.len() >= MAX_PENDING_FINDS {
            let _ = reply.send(Err(Error::Busy("DHT lookups", MAX_PENDING_FINDS)));
            return None;
        }
        Some(reply)
    }

    pub(super) fn add_find(&mut self, id: kad::QueryId, find: PendingFind) {
        self.finds.insert(id, find);
    }

    /// The lookup query `id` belonged to, once.
    pub(super) fn take_find(&mut self, id: &kad::QueryId) -> Option<PendingFind> {
        self.finds.remove(id)
    }

    /// Whether another dial may start; if not, `reply` is answered `Busy`.
    pub(super) fn room_for_dial(
        &self,
        reply: oneshot::Sender<Result<Connected, Error>>,
    ) -> Option<oneshot::Sender<Result<Connected, Error>>> {
        if self.dials.len() >= MAX_PENDING_DIALS {
            let _ = reply.send(Err(Error::Busy("dials", MAX_PENDING_DIALS)));
            return None;
        }
        Some(reply)
    }

    pub(super) fn add_dial(&mut self, id: ConnectionId, dial: PendingDial) {
        self.dials.insert(id, dial);
    }

    /// The dial connection `id` belonged to, once.
    pub(super) fn take_dial(&mut self, id: &ConnectionId) -> Option<PendingDial> {
        self.dials.remove(id)
    }
}

/// Bootstraps that stop after their first step, the lookup of the node's own key. kad starts a
/// bootstrap by itself whenever a peer enters a routing table of fewer than k peers (so a joining
/// node runs two or three in a row), and then every `kad.periodic_bootstrap_secs`. Unless
/// `kad.refresh_buckets_on_join` is set, the bootstraps that begin before the first periodic one
/// is due look up the node's own key only: that makes the node known to its neighbours, and the
/// lookups of the farther buckets (a few hundred requests in a network of a thousand nodes) wait
/// for the periodic refresh. A bootstrap cannot be shortened in kad's configuration, so each later
/// step of such a query is finished as it begins, before it sends a request.
///
/// The peers a joining node's first bootstrap inserts while its table holds fewer than k make kad
/// schedule another, which would look up the node's own key again (~40 requests in a network of
/// a thousand nodes). When a cut bootstrap ends with k peers known, a stand-in bootstrap takes
/// the scheduled one's place (starting one clears kad's schedule) and is finished before it sends
/// anything.
pub(super) struct Join {
    /// Bootstraps that begin before this stop after their first step; `None`: none do.
    light_until: Option<Instant>,
    /// The bootstrap query being cut short.
    cutting: Option<kad::QueryId>,
    /// Whether `cutting` is a stand-in.
    stand_in: bool,
}

impl Join {
    pub(super) fn new(cfg: &crate::dht::Config, now: Instant) -> Self {
        let light_until = match cfg.periodic_bootstrap_secs {
            _ if cfg.refresh_buckets_on_join => None,
            // No periodic refresh: the buckets are never refreshed on purpose.
            0 => now.checked_add(Duration::from_secs(100 * 365 * 86_400)),
            secs => now.checked_add(Duration::from_secs(secs)),
        };
        Self {
            light_until,
            cutting: None,
            stand_in: false,
        }
    }

    /// A step of bootstrap query `id` was reported: finishes the query's next step before it
    /// sends anything if the query is being cut short, and starts the stand-in when a cut query
    /// (not itself a stand-in) has ended with k peers known.
    pub(super) fn on_step(
        &mut self,
        kad: &mut crate::dht::Behaviour,
        id: kad::QueryId,
        step: &kad::ProgressStep,
        now: Instant,
    ) {
        let was_cutting = self.cutting == Some(id);
        if self.stop_after(id, step, now) {
            if let Some(mut query) = kad.query_mut(&id) {
                query.finish();
            }
            return;
        }
        if !(step.last && was_cutting) || std::mem::take(&mut self.stand_in) {
            return;
        }
        if crate::dht::routing_table_size(kad) >= crate::dht::K_VALUE.get()
            && let Ok(stand_in) = kad.bootstrap()
        {
            if let Some(mut query) = kad.query_mut(&stand_in) {
                query.finish();
            }
            self.cutting = Some(stand_in);
            self.stand_in = true;
        }
    }

    fn stop_after(&mut self, id: kad::QueryId, step: &kad::ProgressStep, now: Instant) -> bool {
        if step.last {
            if self.cutting == Some(id) {
                self.cutting = None;
            }
            return false;
        }
        if self.cutting == Some(id) {
            return true;
        }
        let light = self.light_until.is_some_and(|until| now < until);
        if step.count.get() == 1 && light {
            self.cutting = Some(id);
        }
        self.cutting == Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht;

    #[test]
    fn dials_beyond_the_bound_are_answered_busy_and_each_dial_is_answered_once() {
        let mut q = Queries::default();
        for i in 0..MAX_PENDING_DIALS {
            let (tx, _rx) = oneshot::channel();
            let reply = q.room_for_dial(tx).expect("room");
            q.add_dial(
                ConnectionId::new_unchecked(i),
                PendingDial {
                    peer: PeerId::random(),
                    reply,
                },
            );
        }
        let (tx, mut rx) = oneshot::channel();
        assert!(q.room_for_dial(tx).is_none());
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(Error::Busy("dials", MAX_PENDING_DIALS)))
        ));
        let id = ConnectionId::new_unchecked(3);
        assert!(q.take_dial(&id).is_some());
        assert!(q.take_dial(&id).is_none(), "answered once");
        let (tx, _rx) = oneshot::channel();
        assert!(
            q.room_for_dial(tx).is_some(),
            "a finished dial frees its place"
        );
    }

    #[test]
    fn bootstraps_stop_after_the_own_key_lookup_until_the_first_periodic_refresh() {
        let ids = {
            // Query ids come from a kad behaviour's queries only: three bootstraps of a throwaway.
            let mut kad = crate::dht::behaviour(PeerId::random(), &dht::Config::default(), true);
            kad.add_address(&PeerId::random(), "/memory/1".parse().expect("addr"));
            [(); 3].map(|()| kad.bootstrap().expect("a known peer"))
        };
        let step = |count: usize, last| kad::ProgressStep {
            count: count.try_into().expect("count > 0"),
            last,
        };
        let t0 = Instant::now();
        let cfg = dht::Config::default(); // periodic refresh after 300 s
        let mut join = Join::new(&cfg, t0);
        assert!(
            join.stop_after(ids[0], &step(1, false), t0),
            "own key looked up"
        );
        assert!(
            join.stop_after(ids[0], &step(2, false), t0),
            "a bucket refresh cut"
        );
        assert!(
            !join.stop_after(ids[0], &step(3, true), t0),
            "the query ended"
        );
        assert!(
            join.stop_after(ids[1], &step(1, false), t0),
            "the next one is cut too"
        );
        assert!(!join.stop_after(ids[1], &step(2, true), t0));
        let later = t0 + Duration::from_secs(300);
        assert!(
            !join.stop_after(ids[2], &step(1, false), later),
            "periodic: whole"
        );
        assert!(!join.stop_after(ids[2], &step(2, false), later));

        let full = dht::Config {
            refresh_buckets_on_join: true,
            ..dht::Config::default()
        };
        let mut join = Join::new(&full, t0);
        assert!(
            !join.stop_after(ids[0], &step(1, false), t0),
            "refresh_buckets_on_join"
        );

        let never = dht::Config {
            periodic_bootstrap_secs: 0,
            ..dht::Config::default()
        };
        let mut join = Join::new(&never, t0);
        let much_later = t0 + Duration::from_secs(86_400);
        assert!(
            join.stop_after(ids[0], &step(1, false), much_later),
            "no refresh: cut"
        );
    }

    /// Polls kad alone, as the swarm does, until it has nothing to report, handing each bootstrap
    /// step to `join` as the event loop does: the requests kad wanted to send (as dials: no peer is
    /// connected) and the bootstrap queries that ended.
    fn run(kad: &mut dht::Behaviour, join: &mut Join) -> (usize, Vec<kad::QueryId>) {
        use libp2p::swarm::{NetworkBehaviour, ToSwarm};
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let (mut dials, mut ended) = (0, Vec::new());
        let now = Instant::now();
        while let std::task::Poll::Ready(event) = kad.poll(&mut cx) {
            match event {
                ToSwarm::Dial { .. } => dials += 1,
                ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed {
                    id,
                    result: kad::QueryResult::Bootstrap(_),
                    step,
                    ..
                }) => {
                    join.on_step(kad, id, &step, now);
                    if step.last {
                        ended.push(id);
                    }
                }
                _ => {}
            }
        }
        (dials, ended)
    }

    #[test]
    fn a_cut_bootstrap_ending_with_k_peers_known_is_followed_by_a_stand_in_that_sends_nothing() {
        let mut kad = dht::behaviour(PeerId::random(), &dht::Config::default(), true);
        for i in 0..2 * dht::K_VALUE.get() {
            let addr = format!("/memory/{}", i + 1).parse().expect("addr");
            kad.add_address(&PeerId::random(), addr);
        }
        let mut join = Join::new(&dht::Config::default(), Instant::now());
        let first = kad.bootstrap().expect("known peers");
        let (dials, ended) = run(&mut kad, &mut join);
        assert!(dials > 0, "the own-key lookup asks peers");
        assert!(ended.is_empty());
        // Its answers never come: end the own-key lookup as a timeout would.
        kad.query_mut(&first).expect("running").finish();
        let (dials, ended) = run(&mut kad, &mut join);
        assert_eq!(dials, 0, "nothing is sent after the own-key lookup");
        assert_eq!(ended.len(), 2, "the cut bootstrap and its stand-in end");
        assert_eq!(ended[0], first);
        assert_ne!(ended[1], first, "the stand-in");
        assert_eq!(join.cutting, None);
        assert!(!join.stand_in, "the stand-in is not followed by another");
        assert_eq!(
            run(&mut kad, &mut join),
            (0, Vec::new()),
            "nothing runs after it"
        );
    }
}
