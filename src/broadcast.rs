//! Event channels (node events, data-service events, the inbox's new messages) whose ring holds
//! each event once, behind a pointer: tokio's broadcast preallocates every slot, and 1,024 slots
//! of a whole event were 164–287 KB per channel and node whether or not anyone listened (a
//! thousand simulated nodes: `simnet/README.md`, "What a node costs").

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError, error::SendError};

/// A broadcast of events whose ring holds each event once, behind a pointer.
#[derive(Debug)]
pub struct Broadcast<E>(broadcast::Sender<Arc<E>>);

impl<E> Clone for Broadcast<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: Clone> Broadcast<E> {
    /// Keeps up to `capacity` events for a slow subscriber.
    pub fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity).0)
    }

    /// Sends `event` to every subscriber; an error only says there is none.
    pub fn send(&self, event: E) -> Result<usize, SendError<Arc<E>>> {
        self.0.send(Arc::new(event))
    }

    /// Events from now on.
    pub fn subscribe(&self) -> Subscription<E> {
        Subscription(self.0.subscribe())
    }
}

/// One subscriber of a [`Broadcast`]: each event is received as its own copy, as from a
/// `tokio::sync::broadcast::Receiver`.
#[derive(Debug)]
pub struct Subscription<E>(broadcast::Receiver<Arc<E>>);

impl<E: Clone> Subscription<E> {
    /// The next event; `Lagged(n)` when this subscriber fell behind and missed `n` of them.
    pub async fn recv(&mut self) -> Result<E, RecvError> {
        self.0.recv().await.map(|e| E::clone(&e))
    }
}
