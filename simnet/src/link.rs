//! The in-process link model (`[link]` in a scenario): latency, jitter, loss and bandwidth applied
//! to every byte a node writes on the libp2p memory transport (one process) or on loopback TCP
//! (a run split over processes, `simnet::split`). This kernel has no netem, so the delay is
//! applied here, under the security upgrade and Yamux, where a real network would apply it.
//!
//! Each connection end delays what it writes; the other end reads undelayed, so every direction
//! of every connection is shaped once. A write is due at
//! `max(previous due, start of transmission + size / bandwidth + latency ± jitter)`, which keeps
//! the stream in order, queues writes behind a busy link and lets them pipeline. Nodes talk over
//! reliable streams, so a lost segment shows up the way TCP shows it: it arrives one
//! retransmission timeout (`max(200 ms, 2 × latency)`, Linux's minimum RTO) late, and so does
//! everything behind it.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt,
    channel::mpsc,
    io::{ReadHalf, WriteHalf},
};
use libp2p::{
    PeerId, Transport,
    core::{muxing::StreamMuxerBox, transport::MemoryTransport, upgrade},
    identity::Keypair,
    noise, tcp, yamux,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

mod plaintext;

/// Writes queued on one connection end before the writer waits (backpressure).
pub const WRITE_QUEUE: usize = 256;
/// Linux's minimum TCP retransmission timeout: the least a lost segment costs.
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// `[link]`: applied to every connection between simulated nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// One-way delay, milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
    /// Added to each write's delay: uniform in ±jitter_ms (never below zero).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Share of writes that are lost once and retransmitted (0 ≤ loss < 1).
    #[serde(default)]
    pub loss: f64,
    /// Per connection and direction, kilobits per second; 0 = unlimited.
    #[serde(default)]
    pub bandwidth_kbps: f64,
}

impl Link {
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        anyhow::ensure!(
            ok(self.latency_ms) && self.latency_ms <= 10_000.0,
            "link.latency_ms must be 0..=10000"
        );
        anyhow::ensure!(
            ok(self.jitter_ms) && self.jitter_ms <= 10_000.0,
            "link.jitter_ms must be 0..=10000"
        );
        anyhow::ensure!(
            ok(self.loss) && self.loss < 1.0,
            "link.loss must be at least 0 and below 1"
        );
        anyhow::ensure!(
            ok(self.bandwidth_kbps),
            "link.bandwidth_kbps must be at least 0"
        );
        Ok(())
    }

    fn shaping(&self) -> bool {
        self.latency_ms > 0.0
            || self.jitter_ms > 0.0
            || self.loss > 0.0
            || self.bandwidth_kbps > 0.0
    }

    /// The node transport: memory, shaped by this link, then `security` and Yamux as on any
    /// other transport.
    pub fn transport(self, seed: u64, security: Security) -> commucat::node::Transport {
        if !self.shaping() && security == Security::Noise {
            return commucat::node::Transport::Memory;
        }
        commucat::node::Transport::Custom(Box::new(move |keypair: &Keypair| {
            let memory =
                MemoryTransport::default().map(move |chan, _| Shaped::new(chan, self, seed));
            upgraded(memory, keypair, security)
        }))
    }

    /// The same over TCP (a run split over processes: nodes of different processes connect over
    /// loopback or a network between hosts, shaped as in one process).
    pub fn tcp_transport(self, seed: u64, security: Security) -> commucat::node::Transport {
        commucat::node::Transport::Custom(Box::new(move |keypair: &Keypair| {
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(move |stream, _| Shaped::new(stream, self, seed));
            upgraded(tcp, keypair, security)
        }))
    }
}

/// `raw` authenticated with `security` and multiplexed with Yamux.
fn upgraded<T>(raw: T, keypair: &Keypair, security: Security) -> commucat::node::transport::Boxed
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let raw = raw.upgrade(upgrade::Version::V1Lazy);
    match security {
        Security::Noise => raw
            .authenticate(noise::Config::new(keypair).expect("an Ed25519 key signs Noise keys"))
            .multiplex(yamux::Config::default())
            .timeout(commucat::node::transport::UPGRADE_TIMEOUT)
            .map(|(peer, muxer): (PeerId, _), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Security::Plaintext => raw
            .authenticate(plaintext::Config::new(keypair))
            .multiplex(yamux::Config::default())
            .timeout(commucat::node::transport::UPGRADE_TIMEOUT)
            .map(|(peer, muxer): (PeerId, _), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    }
}

/// `security` of a scenario (inproc): the upgrade that authenticates simulated connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// libp2p's plaintext upgrade (`/plaintext/2.0.0`, here `link::plaintext`): peers exchange
    /// their public keys, which prove nothing and encrypt nothing. A connection's setup costs no
    /// Diffie-Hellman, its bytes no cipher: half a simulated node's CPU went to Noise. Everything
    /// above it (Yamux, identify, Kademlia, the data protocol with its own post-quantum
    /// handshake) is unchanged.
    #[default]
    Plaintext,
    /// Noise XX, as the node uses on TCP and QUIC's TLS stands for on QUIC.
    Noise,
}

/// Connection ends opened so far: each gets its own random stream.
static ENDS: AtomicU64 = AtomicU64::new(0);

/// One end of a shaped connection (`S`: a memory channel or a TCP stream): reads pass through;
/// writes go to a pump task that writes each one when it is due.
pub struct Shaped<S> {
    read: ReadHalf<S>,
    queue: Option<mpsc::Sender<(Instant, Vec<u8>)>>,
    link: Link,
    rng: StdRng,
    /// When the link finishes sending what is queued.
    link_free: Instant,
    /// Due time of the last write (writes stay in order).
    last_due: Instant,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Shaped<S> {
    fn new(chan: S, link: Link, seed: u64) -> Self {
        use futures::AsyncReadExt as _;
        let (read, write) = chan.split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(pump(write, rx));
        let end = ENDS.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        Self {
            read,
            queue: Some(tx),
            link,
            rng: StdRng::seed_from_u64(seed ^ end.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            link_free: now,
            last_due: now,
        }
    }

    fn due(&mut self, len: usize) -> Instant {
        let now = Instant::now();
        let l = self.link;
        let start = self.link_free.max(now);
        self.link_free = if l.bandwidth_kbps > 0.0 {
            start + Duration::from_secs_f64(len as f64 * 8.0 / (l.bandwidth_kbps * 1000.0))
        } else {
            start
        };
        let jitter = if l.jitter_ms > 0.0 {
            self.rng.random_range(-l.jitter_ms..=l.jitter_ms)
        } else {
            0.0
        };
        let mut delay_ms = (l.latency_ms + jitter).max(0.0);
        if l.loss > 0.0 && self.rng.random_bool(l.loss) {
            delay_ms += (2.0 * l.latency_ms).max(MIN_RTO.as_secs_f64() * 1000.0);
        }
        let due = (self.link_free + Duration::from_secs_f64(delay_ms / 1000.0)).max(self.last_due);
        self.last_due = due;
        due
    }
}

async fn pump<S: AsyncWrite>(mut write: WriteHalf<S>, mut rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    while let Some((due, bytes)) = rx.next().await {
        tokio::time::sleep_until(due).await;
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        if write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.close().await;
}

impl<S: AsyncRead> AsyncRead for Shaped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> AsyncWrite for Shaped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(queue) = self.queue.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        match queue.poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Ok(())) => {}
        }
        let due = self.due(buf.len());
        let queue = self.queue.as_mut().expect("checked above");
        match queue.start_send((due, buf.to_vec())) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are on the (simulated) wire.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping the sender ends the pump, which closes the channel after the last queued write.
        self.queue.take();
        Poll::Ready(Ok(()))
    }
}
