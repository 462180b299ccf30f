//! `commucat bench`: throughput and handshake rates measured in one run on loopback, with ratios
//! against baselines measured in the same run. Figures, not tests: run it with `--release`.
//!
//! - bulk throughput of raw TCP, of a raw libp2p stream (TCP + Noise + Yamux) and of an end-to-end
//!   `/commucat/data` session over that same kind of stream (64 KiB writes in each case);
//! - messages per second of 1 KiB DATA frames through a session;
//! - hybrid handshakes per second against plain Noise XK: version 1 (Noise XK + ML-KEM-768 +
//!   ML-DSA-65 transcripts, both sides, and the bundle check) and version 2 (Noise XK + three
//!   ML-KEM-768 secrets; bundles verified once, and at first contact);
//! - what a person waits for: two fresh nodes, the libp2p connect (TCP, Noise, Yamux), then the
//!   first message from `send_message` to its ACK (data stream, version 2 handshake with both
//!   bundles exchanged, DATA, ACK), as the data service does it for users.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol, multiaddr::Protocol};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::{
    config::Config,
    crypto::{self, LocalKeys, Pattern, Role, handshake},
    daemon::{self, Daemon},
    data::session,
    node::Node,
    store::Store,
    wire::{Data, FileChunk, Inner},
};

const RAW: StreamProtocol = StreamProtocol::new("/commucat/bench/raw/1.0.0");
const E2E: StreamProtocol = StreamProtocol::new("/commucat/bench/e2e/1.0.0");
/// Bytes per write in the bulk measurements.
const CHUNK: usize = 64 * 1024;
/// Fresh node pairs whose first message is timed, at least.
const MIN_FRESH_PAIRS: usize = 9;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// MiB moved per bulk measurement.
    #[arg(long, default_value_t = 256)]
    bulk_mib: usize,
    /// 1 KiB messages per message measurement.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Handshakes per handshake measurement.
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    tcp_mb_s: f64,
    libp2p_stream_mb_s: f64,
    e2e_session_mb_s: f64,
    e2e_messages_per_s: f64,
    noise_xk_handshakes_per_s: f64,
    /// Version 1: two ML-DSA-65 signatures made and checked per handshake.
    hybrid_handshakes_per_s: f64,
    /// Version 2 between peers whose bundles are verified (the cache).
    hybrid_v2_handshakes_per_s: f64,
    /// Version 2 with both bundles verified in each handshake (first contact).
    hybrid_v2_first_contact_per_s: f64,
    e2e_vs_libp2p_stream: f64,
    libp2p_stream_vs_tcp: f64,
    hybrid_vs_noise_xk: f64,
    hybrid_v2_vs_noise_xk: f64,
    hybrid_v2_first_contact_vs_noise_xk: f64,
    libp2p_connect_ms: f64,
    first_message_ms: f64,
    /// Of `first_message_ms`, the send call: the message stored in the outbox and flushed.
    first_message_queued_ms: f64,
    /// `first_message_ms` − `libp2p_connect_ms`.
    first_message_over_connect_ms: f64,
    bulk_mib: usize,
    runs: usize,
    /// Fresh node pairs behind the first-message figures.
    fresh_pairs: usize,
    debug_build: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let bytes = args.bulk_mib * 1024 * 1024;
    let runs = args.runs.max(1);
    let debug_build = cfg!(debug_assertions);
    if debug_build && !args.json {
        eprintln!("note: a debug build; run `cargo run --release -- bench` for meaningful figures");
    }
    let mut tcp = Vec::new();
    for _ in 0..runs {
        tcp.push(raw_tcp(bytes).await?);
    }
    let downloads = std::env::temp_dir().join(format!("commucat-bench-{}", std::process::id()));
    let mut connect = Vec::new();
    let (mut first, mut queued) = (Vec::new(), Vec::new());
    // Each pair of fresh nodes takes a fraction of a second, and one pair's figure swings with
    // what else the two cores and the disk are doing: more of them for a steadier median.
    let pairs = runs.max(MIN_FRESH_PAIRS);
    for _ in 0..pairs {
        let (c, f, q) = first_message(&downloads).await?;
        connect.push(c);
        first.push(f);
        queued.push(q);
    }
    let ((a, b), _) = node_pair(&downloads).await?;
    let mut raw = Vec::new();
    let mut e2e = Vec::new();
    let mut msgs = Vec::new();
    for _ in 0..runs {
        let (an, bn) = (a.0.node(), b.0.node());
        raw.push(libp2p_stream(an, bn, bytes).await?);
        e2e.push(e2e_bulk((an, &a.1), (bn, &b.1), bytes).await?);
        msgs.push(e2e_messages((an, &a.1), (bn, &b.1), args.messages).await?);
    }
    a.0.shutdown().await?;
    b.0.shutdown().await?;
    let _ = std::fs::remove_dir_all(&downloads);
    let n = args.handshakes.max(1);
    let (mut xk, mut hybrid, mut v2, mut v2_first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        xk.push(noise_xk(n)?);
        hybrid.push(hybrid_handshakes(n)?);
        v2.push(hybrid_v2_handshakes(n, false)?);
        v2_first.push(hybrid_v2_handshakes(n, true)?);
    }
    let r = Report {
        tcp_mb_s: median(tcp),
        libp2p_stream_mb_s: median(raw),
        e2e_session_mb_s: median(e2e),
        e2e_messages_per_s: median(msgs),
        noise_xk_handshakes_per_s: median(xk),
        hybrid_handshakes_per_s: median(hybrid),
        hybrid_v2_handshakes_per_s: median(v2),
        hybrid_v2_first_contact_per_s: median(v2_first),
        e2e_vs_libp2p_stream: 0.0,
        libp2p_stream_vs_tcp: 0.0,
        hybrid_vs_noise_xk: 0.0,
        hybrid_v2_vs_noise_xk: 0.0,
        hybrid_v2_first_contact_vs_noise_xk: 0.0,
        libp2p_connect_ms: median(connect),
        first_message_ms: median(first),
        first_message_queued_ms: median(queued),
        first_message_over_connect_ms: 0.0,
        bulk_mib: args.bulk_mib,
        runs,
        fresh_pairs: pairs,
        debug_build,
    };
    let r = Report {
        e2e_vs_libp2p_stream: r.e2e_session_mb_s / r.libp2p_stream_mb_s,
        libp2p_stream_vs_tcp: r.libp2p_stream_mb_s / r.tcp_mb_s,
        hybrid_vs_noise_xk: r.hybrid_handshakes_per_s / r.noise_xk_handshakes_per_s,
        hybrid_v2_vs_noise_xk: r.hybrid_v2_handshakes_per_s / r.noise_xk_handshakes_per_s,
        hybrid_v2_first_contact_vs_noise_xk: r.hybrid_v2_first_contact_per_s
            / r.noise_xk_handshakes_per_s,
        first_message_over_connect_ms: r.first_message_ms - r.libp2p_connect_ms,
        ..r
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r);
    }
    Ok(())
}

/// The report as a table.
fn print(r: &Report) {
    println!(
        "Loopback, {} MiB per bulk run, median of {} runs:",
        r.bulk_mib, r.runs
    );
    println!(
        "  raw TCP                          {:>9.0} MB/s",
        r.tcp_mb_s
    );
    println!(
        "  libp2p stream (Noise + Yamux)    {:>9.0} MB/s   {:.2} × raw TCP",
        r.libp2p_stream_mb_s, r.libp2p_stream_vs_tcp
    );
    println!(
        "  /commucat/data E2E session       {:>9.0} MB/s   {:.2} × libp2p stream",
        r.e2e_session_mb_s, r.e2e_vs_libp2p_stream
    );
    println!(
        "  E2E 1 KiB messages               {:>9.0} msg/s",
        r.e2e_messages_per_s
    );
    println!("Handshakes (both sides, in process):");
    println!(
        "  Noise XK                         {:>9.0} /s",
        r.noise_xk_handshakes_per_s
    );
    println!(
        "  hybrid v1 (ML-KEM + ML-DSA)      {:>9.0} /s   {:.3} × Noise XK",
        r.hybrid_handshakes_per_s, r.hybrid_vs_noise_xk
    );
    println!(
        "  hybrid v2 IK (bundles held)       {:>8.0} /s   {:.3} × Noise XK",
        r.hybrid_v2_handshakes_per_s, r.hybrid_v2_vs_noise_xk
    );
    println!(
        "  hybrid v2 XX, first contact       {:>8.0} /s   {:.3} × Noise XK",
        r.hybrid_v2_first_contact_per_s, r.hybrid_v2_first_contact_vs_noise_xk
    );
    println!(
        "Two fresh nodes on loopback, median of {} pairs:",
        r.fresh_pairs
    );
    println!(
        "  libp2p connect                   {:>9.1} ms",
        r.libp2p_connect_ms
    );
    println!(
        "  then the first message, ACKed    {:>9.1} ms   connect + {:.1} ms",
        r.first_message_ms, r.first_message_over_connect_ms
    );
    println!(
        "    of which the durable enqueue   {:>9.1} ms",
        r.first_message_queued_ms
    );
}

async fn raw_tcp(bytes: usize) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        count_all(s).await
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    send_all(&mut s, bytes).await?;
    let got = reader.await??;
    anyhow::ensure!(got == bytes, "TCP moved {got} of {bytes} bytes");
    Ok(mb_s(bytes, start.elapsed().as_secs_f64()))
}

/// Writes `bytes` bytes in [`CHUNK`]s, then closes the write side.
async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: usize) -> std::io::Result<()> {
    let chunk = vec![7u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&chunk[..n]).await?;
        left -= n;
    }
    w.shutdown().await
}

/// Reads to the end; how many bytes came.
async fn count_all<R: AsyncRead + Unpin>(mut r: R) -> anyhow::Result<usize> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

type BenchNode = (Daemon, Arc<LocalKeys>);

/// Two whole nodes on real TCP sockets on 127.0.0.1, connected. The benchmark's streams are its own
/// protocols; the data service runs as it does for users.
async fn node_pair(downloads: &std::path::Path) -> anyhow::Result<((BenchNode, BenchNode), f64)> {
    let mut cfg = Config::default();
    cfg.network.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    cfg.mdns.enabled = false;
    cfg.bootstrap.peers.clear();
    let ka = Arc::new(LocalKeys::generate());
    let kb = Arc::new(LocalKeys::generate());
    let spawn = |keys: &Arc<LocalKeys>| -> anyhow::Result<_> {
        Ok(
            daemon::Builder::new(cfg.clone(), keys.clone(), Store::temporary()?)
                .downloads(downloads.to_owned())
                .spawn(),
        )
    };
    let a = spawn(&ka)?.await?;
    let b = spawn(&kb)?.await?;
    let b_addr: Multiaddr = b.client().status().await?.listen_addrs[0].clone();
    let start = Instant::now();
    a.client()
        .connect(
            b.node().peer_id(),
            vec![b_addr.with(Protocol::P2p(b.node().peer_id()))],
        )
        .await
        .context("connecting the bench nodes")?;
    let connect_ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((((a, ka), (b, kb)), connect_ms))
}

/// Two fresh nodes (no bundle of each other cached): their libp2p connect, then the first
/// message from the send call to its ACK, and of that the send call (the durable enqueue), in
/// milliseconds.
async fn first_message(downloads: &std::path::Path) -> anyhow::Result<(f64, f64, f64)> {
    let ((a, b), connect_ms) = node_pair(downloads).await?;
    let mut events = a.0.data().subscribe();
    let to = b.0.node().peer_id();
    let start = Instant::now();
    a.0.data()
        .send_message(to, "first".into(), crate::store::Via::default())
        .await?;
    let queued_ms = start.elapsed().as_secs_f64() * 1000.0;
    let acked = async {
        loop {
            match events.recv().await {
                Ok(crate::data::Event::MessagesDelivered { to: t, .. }) if t == to => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("no acknowledgement: {e}")),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), acked)
        .await
        .context("the first message was not acknowledged within 30 s")??;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    a.0.shutdown().await?;
    b.0.shutdown().await?;
    Ok((connect_ms, first_ms, queued_ms))
}

async fn libp2p_stream(a: &Node, b: &Node, bytes: usize) -> anyhow::Result<f64> {
    let mut incoming = b.stream_control().accept(RAW)?;
    let reader = tokio::spawn(async move {
        let (_, s) = incoming.next().await.context("no stream")?;
        count_all(s.compat()).await
    });
    let mut s = a
        .stream_control()
        .open_stream(b.peer_id(), RAW)
        .await?
        .compat();
    let start = Instant::now();
    send_all(&mut s, bytes).await?;
    let got = reader.await??;
    anyhow::ensure!(got == bytes, "libp2p stream moved {got} of {bytes} bytes");
    Ok(mb_s(bytes, start.elapsed().as_secs_f64()))
}

/// An established session from `a` to `b` over a fresh stream, and the responder's task result:
/// payload bytes received and messages received.
async fn session_pair(
    a: (&Node, &Arc<LocalKeys>),
    b: (&Node, &Arc<LocalKeys>),
) -> anyhow::Result<(
    session::Session<tokio_util::compat::Compat<libp2p::Stream>>,
    tokio::task::JoinHandle<anyhow::Result<(usize, usize)>>,
)> {
    let mut incoming = b.0.stream_control().accept(E2E)?;
    let b_keys = b.1.clone();
    let a_id: PeerId = a.0.peer_id();
    let receiver = tokio::spawn(async move {
        let (_, s) = incoming.next().await.context("no stream")?;
        let ctx = session::Context::new(b_keys);
        let mut session = session::respond(s.compat(), &ctx, a_id).await?;
        let (mut bytes, mut messages) = (0, 0);
        while let Some(inner) = session.reader.recv().await? {
            match inner {
                Inner::FileChunk(c) => bytes += c.packets.len(),
                Inner::Data(d) => {
                    messages += 1;
                    bytes += d.body.len();
                }
                Inner::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok((bytes, messages))
    });
    let s = a.0.stream_control().open_stream(b.0.peer_id(), E2E).await?;
    let ctx = session::Context::new(a.1.clone());
    let session = session::initiate(s.compat(), &ctx, b.0.peer_id(), None).await?;
    Ok((session, receiver))
}

async fn e2e_bulk(
    a: (&Node, &Arc<LocalKeys>),
    b: (&Node, &Arc<LocalKeys>),
    bytes: usize,
) -> anyhow::Result<f64> {
    let (mut s, receiver) = session_pair(a, b).await?;
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        // One sealed frame per 64 KiB, like the raw runs' writes; written out every 256 KiB (no
        // flush per frame: the raw runs do not flush either).
        s.writer.queue(&Inner::FileChunk(FileChunk {
            transfer_id: [0; 16],
            block: 0,
            packets: chunk.slice(..n),
        }))?;
        if s.writer.queued_bytes() >= 4 * CHUNK {
            s.writer.write_queued().await?;
        }
        left -= n;
    }
    s.writer.close().await;
    let (got, _) = receiver.await??;
    anyhow::ensure!(got == bytes, "session moved {got} of {bytes} bytes");
    Ok(mb_s(bytes, start.elapsed().as_secs_f64()))
}

async fn e2e_messages(
    a: (&Node, &Arc<LocalKeys>),
    b: (&Node, &Arc<LocalKeys>),
    count: usize,
) -> anyhow::Result<f64> {
    let (mut s, receiver) = session_pair(a, b).await?;
    let body = "x".repeat(1024);
    let start = Instant::now();
    for i in 0..count {
        s.writer.queue(&Inner::Data(Data {
            epoch: 1,
            seq: i as u64 + 1,
            msg_id: [0; 16],
            sent_at_ms: 0,
            via: Default::default(),
            group: None,
            body: body.clone(),
        }))?;
        if i % 64 == 63 {
            s.writer.flush().await?;
        }
    }
    s.writer.close().await;
    let (_, got) = receiver.await??;
    anyhow::ensure!(got == count, "session moved {got} of {count} messages");
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Plain Noise XK handshakes (both sides, in process) per second.
fn noise_xk(n: usize) -> anyhow::Result<f64> {
    let params: snow::params::NoiseParams = "Noise_XK_25519_ChaChaPoly_BLAKE2s".parse()?;
    let builder = snow::Builder::new(params.clone());
    let rs = builder.generate_keypair()?;
    let is = builder.generate_keypair()?;
    let mut buf = vec![0u8; 1024];
    let mut payload = vec![0u8; 1024];
    let start = Instant::now();
    for _ in 0..n {
        let mut i = snow::Builder::new(params.clone())
            .prologue(handshake::PROLOGUE)?
            .local_private_key(&is.private)?
            .remote_public_key(&rs.public)?
            .build_initiator()?;
        let mut r = snow::Builder::new(params.clone())
            .prologue(handshake::PROLOGUE)?
            .local_private_key(&rs.private)?
            .build_responder()?;
        let len = i.write_message(&[], &mut buf)?;
        r.read_message(&buf[..len], &mut payload)?;
        let len = r.write_message(&[], &mut buf)?;
        i.read_message(&buf[..len], &mut payload)?;
        let len = i.write_message(&[], &mut buf)?;
        r.read_message(&buf[..len], &mut payload)?;
        anyhow::ensure!(i.is_handshake_finished() && r.is_handshake_finished());
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Version 2 handshakes (both sides, in process) per second, with the three ML-KEM-768 secrets
/// and key derivation. Between peers that hold each other's bundles (verified once before, as
/// the bundle cache does between sessions) it is Noise IK; at `first_contact` it is Noise XX and
/// each side also verifies the other's bundle (two ML-DSA-65 and two Ed25519 checks each).
fn hybrid_v2_handshakes(n: usize, first_contact: bool) -> anyhow::Result<f64> {
    let i = LocalKeys::generate();
    let r = LocalKeys::generate();
    let (ip, rp) = (i.peer_id(), r.peer_id());
    let (ik, rk) = (i.bundle.current(), r.bundle.current());
    let (i_bytes, r_bytes) = (ik.bundle().as_bytes(), rk.bundle().as_bytes());
    let (mut i_seen, mut r_seen) = (
        crypto::Bundle::verify(i_bytes, &ip)?,
        crypto::Bundle::verify(r_bytes, &rp)?,
    );
    let start = Instant::now();
    for _ in 0..n {
        let (i_keys, r_keys) = if first_contact {
            r_seen = crypto::Bundle::verify(r_bytes, &rp)?;
            i_seen = crypto::Bundle::verify(i_bytes, &ip)?;
            let (mut init, m1) = handshake::v2::Initiator::start_xx(ik.clone(), &ip, &rp, None)?;
            let step1 =
                handshake::v2::Responder::read_step1(rk.clone(), Pattern::Xx, &m1, &ip, None)?;
            let (mut resp, m2) = step1.reply(&i_seen, None)?;
            let m3 = init
                .read_step2(&m2, Some(&r_seen))?
                .context("XX has a third message")?;
            resp.read_step3(&m3)?;
            (init.finish()?, resp.finish()?)
        } else {
            let (mut init, m1) =
                handshake::v2::Initiator::start_ik(ik.clone(), &r_seen, &ip, None)?;
            let step1 =
                handshake::v2::Responder::read_step1(rk.clone(), Pattern::Ik, &m1, &ip, None)?;
            let (resp, m2) = step1.reply(&i_seen, None)?;
            anyhow::ensure!(init.read_step2(&m2, None)?.is_none());
            (init.finish()?, resp.finish()?)
        };
        anyhow::ensure!(i_keys == r_keys);
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Hybrid handshakes (both sides, in process) per second: the bundle check, Noise XK with the
/// ML-KEM-768 encapsulation and key confirmation, key derivation, and both ML-DSA-65 transcript
/// signatures made and verified.
fn hybrid_handshakes(n: usize) -> anyhow::Result<f64> {
    let i = LocalKeys::generate();
    let r = LocalKeys::generate();
    let (ip, rp) = (i.peer_id(), r.peer_id());
    let bundle_bytes = r.bundle.current().bundle().as_bytes().to_vec();
    let start = Instant::now();
    for _ in 0..n {
        let bundle = crypto::Bundle::verify(&bundle_bytes, &rp)?;
        let (mut init, m1) =
            handshake::Initiator::start(&i.bundle.current(), &bundle, Pattern::Xk)?;
        let (mut resp, m2) =
            handshake::Responder::read_step1(&r.bundle.current(), Pattern::Xk, &m1)?;
        let m3 = init.read_step2(&m2)?.context("XK has a third message")?;
        resp.read_step3(&m3)?;
        let (ki, kr) = (init.finish()?, resp.finish()?);
        anyhow::ensure!(ki == kr);
        let h = ki.handshake_hash;
        let si = handshake::sign_transcript(&i.identity, Role::Initiator, &ip, &rp, &h);
        let sr = handshake::sign_transcript(&r.identity, Role::Responder, &ip, &rp, &h);
        handshake::verify_transcript(
            r.bundle.current().bundle().binding(),
            &sr,
            Role::Responder,
            &ip,
            &rp,
            &h,
        )?;
        i.identity.binding().verify()?;
        handshake::verify_transcript(i.identity.binding(), &si, Role::Initiator, &ip, &rp, &h)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
