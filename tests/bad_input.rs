//! A node under attack keeps serving everyone else: an attacker's tampered, replayed, oversized and
//! unknown frames, DATA before the handshake and a forged key bundle each get the ERROR code the
//! spec gives, while a good peer's 300 messages all arrive and nothing leaves the outbox undelivered.

mod common;

use std::{sync::Arc, time::Duration};

use common::inproc::{Peer, config, until};
use commucat::{
    crypto::LocalKeys,
    data::{ErrorCode, Frame, session},
    node::{self, Node, Transport},
    store::Store,
    wire::{self, Data, FileChunk, FileMeta, FileStatus, Inner, file_state},
};
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

const WAIT: Duration = Duration::from_secs(60);

/// Writes raw bytes on a fresh stream to `target` and returns the ERROR code of the reply.
async fn raw_reply(control: &node::streams::Control, target: PeerId, bytes: &[u8]) -> Option<u16> {
    let mut s = control.open_stream(target).await.unwrap().compat();
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut reply)).await;
    (reply.len() >= 7 && reply[4] == wire::kind::ERROR)
        .then(|| u16::from_be_bytes([reply[5], reply[6]]))
}

fn data_frame(seq: u64) -> Inner {
    Inner::Data(Data {
        epoch: 42,
        seq,
        msg_id: [seq as u8; 16],
        sent_at_ms: 0,
        via: Default::default(),
        group: None,
        body: format!("attacker {seq}"),
    })
}

/// The next FILE_STATUS, skipping ACKs.
async fn file_status<S: tokio::io::AsyncRead>(reader: &mut session::Reader<S>) -> FileStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            match reader.recv().await {
                Ok(Some(Inner::FileStatus(s))) => return s,
                Ok(Some(_)) => continue,
                other => panic!("session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a FILE_STATUS in time")
}

/// The code of the first ERROR the session gets back, skipping ACKs.
async fn session_error<S: tokio::io::AsyncRead>(
    reader: &mut session::Reader<S>,
) -> Option<ErrorCode> {
    tokio::time::timeout(WAIT, async {
        loop {
            match reader.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return e.code(),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_rejected_while_good_peers_are_served() {
    let n = Peer::new(&[]).await;
    let n_addr = n.addr().await;
    let good = Peer::new(std::slice::from_ref(&n_addr)).await;
    // The attacker: a plain node that speaks the protocol by hand.
    let x_keys = Arc::new(LocalKeys::generate());
    let x = Node::spawn(
        &config(&[n_addr]).node(),
        x_keys.clone(),
        &Store::temporary().unwrap(),
        Transport::Memory,
    )
    .await
    .unwrap();
    let control = x.data_control();
    let n_id = n.peer_id();

    // The good peer sends all along.
    let sender = {
        let data = good.data().clone();
        tokio::spawn(async move {
            for i in 0..300 {
                data.send_message(n_id, format!("good {i}"), commucat::store::Via::default())
                    .await
                    .unwrap();
                if i % 30 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    // Oversized frame, unknown frame type, DATA before the handshake: answered from the first bytes.
    assert_eq!(
        raw_reply(&control, n_id, &[0x00, 0x10, 0x00, 0x00, 0x01]).await,
        Some(3)
    );
    assert_eq!(
        raw_reply(&control, n_id, &[0, 0, 0, 1, 0x7e]).await,
        Some(4)
    );
    assert_eq!(
        raw_reply(&control, n_id, &[0, 0, 0, 1, 0x21]).await,
        Some(5)
    );

    let ctx = session::Context::new(x_keys.clone());
    // Tampered ciphertext.
    let stream = control.open_stream(n_id).await.unwrap().compat();
    let mut s = session::initiate(stream, &ctx, n_id, None).await.unwrap();
    let mut frame = s.writer.seal_detached(&data_frame(1)).unwrap();
    let at = frame.len() - 20;
    frame[at] ^= 0x80;
    s.writer.write_raw(&frame).await.unwrap();
    assert_eq!(
        session_error(&mut s.reader).await,
        Some(ErrorCode::DECRYPT_FAILED)
    );

    // Replayed frame: the first copy is taken, the second refused.
    let stream = control.open_stream(n_id).await.unwrap().compat();
    let mut s = session::initiate(stream, &ctx, n_id, None).await.unwrap();
    let frame = s.writer.seal_detached(&data_frame(1)).unwrap();
    s.writer.write_raw(&frame).await.unwrap();
    s.writer.write_raw(&frame).await.unwrap();
    assert_eq!(session_error(&mut s.reader).await, Some(ErrorCode::REPLAY));

    // Version 2 (data-v2.md): someone else's bundle passed off as X's own is refused as soon as
    // its check fails, whatever the handshake waits for.
    let someone = LocalKeys::generate();
    let mut raw = Vec::new();
    Frame::Hello {
        version: 2,
        need_bundle: false,
        bundle_follows: true,
    }
    .encode(&mut raw);
    Frame::Bundle(bytes::Bytes::copy_from_slice(
        someone.bundle.current().bundle().as_bytes(),
    ))
    .encode(&mut raw);
    assert_eq!(
        raw_reply(&control, n_id, &raw).await,
        Some(ErrorCode::BAD_BUNDLE.0)
    );
    // A KEY_DONE with no key update under way ends that session (UNEXPECTED_FRAME).
    let stream = control.open_stream(n_id).await.unwrap().compat();
    let mut s = session::initiate(stream, &ctx, n_id, None).await.unwrap();
    assert_eq!(s.version, 2);
    s.writer.send(&Inner::KeyDone).await.unwrap();
    assert_eq!(
        session_error(&mut s.reader).await,
        Some(ErrorCode::UNEXPECTED_FRAME)
    );

    // Forged key bundle: N opens a session to X (it has a message for X), and X answers HELLO with a
    // bundle that is not its own.
    let mut incoming = x.take_data_streams().expect("no data service on X");
    n.data()
        .send_message(
            x_keys.peer_id(),
            "for x".into(),
            commucat::store::Via::default(),
        )
        .await
        .unwrap();
    let (from, stream) = tokio::time::timeout(WAIT, incoming.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, n_id);
    let mut stream = stream.compat();
    let mut hello = [0u8; 7];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(
        &hello[4..],
        &[wire::kind::HELLO, 2, 3],
        "HELLO version 2 asking for the bundle, its own following"
    );
    // N's own bundle (data-v2.md §3).
    let mut theirs = vec![0u8; 4 + 1 + commucat::crypto::bundle::BUNDLE_LEN];
    stream.read_exact(&mut theirs).await.unwrap();
    assert_eq!(theirs[4], wire::kind::BUNDLE);
    let someone_else = LocalKeys::generate();
    let mut out = Vec::new();
    Frame::Bundle(bytes::Bytes::copy_from_slice(
        someone_else.bundle.current().bundle().as_bytes(),
    ))
    .encode(&mut out);
    stream.write_all(&out).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut reply)).await;
    // After its HANDSHAKE step 1 (XX), the ERROR.
    let mut frames = wire::FrameCodec;
    let mut buf = bytes::BytesMut::from(&reply[..]);
    let mut codes = Vec::new();
    while let Ok(Some(f)) = tokio_util::codec::Decoder::decode(&mut frames, &mut buf) {
        if let Frame::Error { code, .. } = f {
            codes.push(code);
        }
    }
    assert_eq!(codes, [ErrorCode::BAD_BUNDLE]);
    assert_eq!(
        n.data().outbox().queued(),
        1,
        "the message for X stays queued"
    );

    // A name that climbs out of the downloads directory lands inside it, and a file whose bytes do
    // not match the announced hash is refused and its partial file deleted.
    let content = b"climbing out ".repeat(40);
    let stream = control.open_stream(n_id).await.unwrap().compat();
    let mut s = session::initiate(stream, &ctx, n_id, None).await.unwrap();
    for (id, name, hash, want) in [
        (
            [1u8; 16],
            "../../escape.txt",
            Sha256::digest(&content).into(),
            file_state::COMPLETE,
        ),
        ([2u8; 16], "wrong.bin", [0u8; 32], file_state::FAILED),
    ] {
        let meta = FileMeta {
            transfer_id: id,
            size: content.len() as u64,
            hash_alg: 1,
            hash,
            block_size: 4096,
            symbol_size: 64,
            repair_per_mille: 0,
            name: name.into(),
        };
        s.writer.send(&Inner::FileMeta(meta)).await.unwrap();
        assert_eq!(
            file_status(&mut s.reader).await.state,
            file_state::RECEIVING
        );
        let packets = commucat::fec::encode_block(&content, 64, 0).unwrap();
        s.writer
            .send(&Inner::FileChunk(FileChunk {
                transfer_id: id,
                block: 0,
                packets: packets.into(),
            }))
            .await
            .unwrap();
        let last = file_status(&mut s.reader).await;
        assert_eq!(last.state, want, "{name}");
        if want == file_state::FAILED {
            assert_eq!(last.error, ErrorCode::HASH_MISMATCH.0);
        }
    }
    let downloads = n.downloads.path();
    assert_eq!(
        std::fs::read(downloads.join("escape.txt")).unwrap(),
        content
    );
    assert!(
        !downloads.join("../../escape.txt").exists() && !downloads.join("../escape.txt").exists()
    );
    assert!(!downloads.join("wrong.bin").exists());
    let partials: Vec<_> = std::fs::read_dir(downloads.join(".commucat-partial"))
        .unwrap()
        .collect();
    assert!(
        partials.is_empty(),
        "the mismatching partial file is gone: {partials:?}"
    );

    // Through all of it the good peer's messages arrived, in order, once each.
    sender.await.unwrap();
    until("N to hold the good peer's 300 messages", WAIT, || async {
        n.data()
            .inbox()
            .list(0, 1000)
            .unwrap()
            .iter()
            .filter(|m| m.from == good.peer_id())
            .count()
            == 300
    })
    .await;
    let good_bodies: Vec<String> = n
        .data()
        .inbox()
        .list(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|m| m.from == good.peer_id())
        .map(|m| m.body)
        .collect();
    assert_eq!(
        good_bodies,
        (0..300).map(|i| format!("good {i}")).collect::<Vec<_>>()
    );
    until("the good peer's outbox to empty", WAIT, || async {
        good.data().outbox().queued() == 0
    })
    .await;

    // And a well-behaved session from the former attacker still works.
    let stream = control.open_stream(n_id).await.unwrap().compat();
    let mut s = session::initiate(stream, &ctx, n_id, None).await.unwrap();
    s.writer
        .send(&Inner::Data(Data {
            epoch: 43,
            seq: 1,
            msg_id: [9; 16],
            sent_at_ms: 0,
            via: Default::default(),
            group: None,
            body: "sorry".into(),
        }))
        .await
        .unwrap();
    let ack = tokio::time::timeout(WAIT, s.reader.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, Some(Inner::Ack { epoch: 43, seq: 1 }));

    drop(incoming);
    x.shutdown().await;
    good.stop().await;
    n.stop().await;
}
