//! libp2p's plaintext upgrade, `/plaintext/2.0.0`
//! (<https://github.com/libp2p/specs/blob/master/plaintext/README.md>), for simulated connections:
//! each side sends `Exchange { id, pubkey }` (protobuf, length-prefixed with an unsigned varint)
//! and reads the other's; the remote's peer id must be its key's. Nothing is proven or encrypted.
//!
//! Not libp2p-plaintext's `Config`, which speaks the same bytes: its handshake reads through a
//! `Framed` and keeps the framer's 8 KiB read buffer in its output for the connection's whole
//! life, even when empty, and every connection end of a simulation then held 8 KiB it never
//! used (237 MB of `bursty-join`'s peak: simnet/README.md, "Memory at the joins' peak"). This
//! one reads the exchange to its last byte and no further, and hands on the socket itself. The
//! tests below run it against libp2p-plaintext.

use std::{io, iter, sync::Arc};

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, future::BoxFuture};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::{Keypair, PublicKey},
};

/// The protocol name multistream-select agrees on.
pub const PROTOCOL: &str = "/plaintext/2.0.0";
/// Longest `Exchange` accepted (an Ed25519 key's is 78 bytes; RSA keys are longer).
pub const MAX_EXCHANGE: usize = 4096;

/// The upgrade: this node's `Exchange`, encoded once (libp2p clones the upgrade for every
/// connection).
#[derive(Clone)]
pub struct Config {
    exchange: Arc<[u8]>,
}

impl Config {
    pub fn new(keypair: &Keypair) -> Self {
        let public = keypair.public();
        let mut body = Vec::new();
        field(&mut body, 1, &public.to_peer_id().to_bytes());
        field(&mut body, 2, &public.encode_protobuf());
        let mut exchange = varint(body.len() as u64);
        exchange.extend_from_slice(&body);
        Self {
            exchange: exchange.into(),
        }
    }

    async fn handshake<C>(self, mut socket: C) -> io::Result<(PeerId, C)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        socket.write_all(&self.exchange).await?;
        socket.flush().await?;
        let len = read_len(&mut socket).await?;
        let mut body = vec![0; len];
        socket.read_exact(&mut body).await?;
        let (id, key) = parse(&body).ok_or_else(|| invalid("malformed Exchange"))?;
        let key = PublicKey::try_decode_protobuf(key).map_err(|e| invalid(&e.to_string()))?;
        let peer = PeerId::from_bytes(id).map_err(|e| invalid(&e.to_string()))?;
        if peer != key.to_peer_id() {
            return Err(invalid("the Exchange's peer id is not its key's"));
        }
        Ok((peer, socket))
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, C);
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<(PeerId, C)>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        Box::pin(self.handshake(socket))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, C);
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<(PeerId, C)>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        Box::pin(self.handshake(socket))
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("plaintext: {what}"))
}

fn varint(v: u64) -> Vec<u8> {
    unsigned_varint::encode::u64(v, &mut unsigned_varint::encode::u64_buffer()).to_vec()
}

/// A length-delimited protobuf field (wire type 2).
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    out.extend_from_slice(&varint(number << 3 | 2));
    out.extend_from_slice(&varint(bytes.len() as u64));
    out.extend_from_slice(bytes);
}

/// The length prefix, read a byte at a time so that nothing after the message is consumed.
async fn read_len<C: AsyncRead + Unpin>(socket: &mut C) -> io::Result<usize> {
    let mut len = 0usize;
    for i in 0..2 {
        let mut b = [0u8];
        socket.read_exact(&mut b).await?;
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return if len <= MAX_EXCHANGE {
                Ok(len)
            } else {
                Err(invalid("Exchange longer than 4096 bytes"))
            };
        }
    }
    Err(invalid("Exchange longer than 4096 bytes"))
}

/// A varint at the start of `buf`, and the rest.
fn take_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    unsigned_varint::decode::u64(buf).ok()
}

/// `Exchange`'s `id` and `pubkey`; other fields are skipped, as protobuf readers do.
fn parse(mut buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut id, mut key) = (None, None);
    while !buf.is_empty() {
        let (tag, rest) = take_varint(buf)?;
        buf = match tag & 7 {
            0 => take_varint(rest)?.1,
            1 => rest.get(8..)?,
            5 => rest.get(4..)?,
            2 => {
                let (len, rest) = take_varint(rest)?;
                let len = usize::try_from(len).ok()?;
                let value = rest.get(..len)?;
                match tag >> 3 {
                    1 => id = Some(value),
                    2 => key = Some(value),
                    _ => {}
                }
                &rest[len..]
            }
            _ => return None,
        };
    }
    Some((id?, key?))
}

#[cfg(test)]
mod tests {
    use futures::future::join;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    use super::*;

    /// A connected pair of in-memory sockets.
    fn pair() -> (
        Compat<tokio::io::DuplexStream>,
        Compat<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        (a.compat(), b.compat())
    }

    #[tokio::test]
    async fn speaks_libp2p_plaintext_both_ways() {
        let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for we_dial in [true, false] {
            let (a, b) = pair();
            let mine = Config::new(&ours);
            let libp2p = libp2p::plaintext::Config::new(&theirs);
            let (mine, libp2p) = if we_dial {
                join(
                    mine.upgrade_outbound(a, PROTOCOL),
                    libp2p.upgrade_inbound(b, PROTOCOL),
                )
                .await
            } else {
                let (l, m) = join(
                    libp2p.upgrade_outbound(b, PROTOCOL),
                    mine.upgrade_inbound(a, PROTOCOL),
                )
                .await;
                (m, l)
            };
            let (peer, mut mine) = mine.expect("our side of the handshake");
            let (their_peer, mut libp2p) = libp2p.expect("libp2p-plaintext's side");
            assert_eq!(peer, theirs.public().to_peer_id());
            assert_eq!(their_peer, ours.public().to_peer_id());
            // The sockets carry what follows, both ways.
            mine.write_all(b"ours").await.unwrap();
            libp2p.write_all(b"theirs").await.unwrap();
            let (mut x, mut y) = ([0u8; 6], [0u8; 4]);
            mine.read_exact(&mut x).await.unwrap();
            libp2p.read_exact(&mut y).await.unwrap();
            assert_eq!((&x, &y), (b"theirs", b"ours"));
        }
    }

    /// What the remote sends right after its exchange, in the same write, is left on the socket.
    #[tokio::test]
    async fn reads_no_further_than_the_exchange() {
        let (a, mut b) = pair();
        let theirs = Keypair::generate_ed25519();
        let mut bytes = Config::new(&theirs).exchange.to_vec();
        bytes.extend_from_slice(b"next");
        b.write_all(&bytes).await.unwrap();
        let mine = Config::new(&Keypair::generate_ed25519());
        let (peer, mut socket) = mine.upgrade_inbound(a, PROTOCOL).await.unwrap();
        assert_eq!(peer, theirs.public().to_peer_id());
        let mut next = [0u8; 4];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            socket.read_exact(&mut next),
        )
        .await
        .expect("the bytes after the exchange are still there to read")
        .unwrap();
        assert_eq!(&next, b"next");
    }

    #[tokio::test]
    async fn refuses_a_peer_id_that_is_not_the_keys() {
        let (a, mut b) = pair();
        let mine = Config::new(&Keypair::generate_ed25519());
        let mut forged = Vec::new();
        field(&mut forged, 1, &PeerId::random().to_bytes());
        field(
            &mut forged,
            2,
            &Keypair::generate_ed25519().public().encode_protobuf(),
        );
        let mut msg = varint(forged.len() as u64);
        msg.extend_from_slice(&forged);
        b.write_all(&msg).await.unwrap();
        let err = mine
            .upgrade_inbound(a, PROTOCOL)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not its key's"), "{err}");
    }

    #[tokio::test]
    async fn refuses_an_oversized_or_malformed_exchange() {
        for bytes in [varint(MAX_EXCHANGE as u64 + 1), vec![0xff, 0xff, 0xff], {
            let mut m = varint(3);
            m.extend_from_slice(&[0x0a, 0x05, 0x01]);
            m
        }] {
            let (a, mut b) = pair();
            let mine = Config::new(&Keypair::generate_ed25519());
            b.write_all(&bytes).await.unwrap();
            let err = mine
                .upgrade_inbound(a, PROTOCOL)
                .await
                .expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bytes:?}: {err}");
        }
    }
}
