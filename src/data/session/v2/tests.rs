//! Version 2 over in-memory pipes: interoperation with version 1 in both directions, a responder
//! that forgot the initiator's bundle, the initiator's static key bound to its bundle, key updates
//! with no frame lost, and key-update frames where they do not belong.

use tokio::io::duplex;

use super::super::tests::{ctx, data, data_and_ack, keys, pair_in};
use super::super::*;
use crate::wire::kind;

#[tokio::test]
async fn version_2_and_version_1_peers_interoperate_both_ways() {
    let (a, b) = (keys(), keys());
    let (new, old) = (ctx(&a, 2), ctx(&b, 1));
    // A version 2 initiator meets a version 1 responder: it is told, remembers, and the next
    // session is version 1.
    let (i, r) = pair_in(&new, &old, None).await;
    let e = i.err().expect("a version 1 node refuses HELLO version 2");
    assert!(
        matches!(e, Error::Remote { code, .. } if code == ErrorCode::UNSUPPORTED_VERSION),
        "{e}"
    );
    assert_eq!(
        r.err().and_then(|e| e.code()),
        Some(ErrorCode::UNSUPPORTED_VERSION)
    );
    assert_eq!(new.version_for(&b.peer_id()), 1);
    let (i, r) = pair_in(&new, &old, None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!((i.version, r.version), (1, 1));
    data_and_ack(&mut i, &mut r).await;
    // A version 1 initiator meets a version 2 responder: version 1 at once.
    let (i, r) = pair_in(&old, &new, None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!((i.version, r.version), (1, 1));
    data_and_ack(&mut i, &mut r).await;
    // Two version 2 nodes speak version 2.
    let c = keys();
    let (i, r) = pair_in(&new, &ctx(&c, 2), None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!((i.version, r.version), (2, 2));
    data_and_ack(&mut i, &mut r).await;
}

#[tokio::test]
async fn a_responder_that_forgot_the_initiators_bundle_asks_for_it() {
    let (a, b) = (keys(), keys());
    let ia = ctx(&a, 2);
    let (i, r) = pair_in(&ia, &ctx(&b, 2), None).await;
    let (i, _) = (i.unwrap(), r.unwrap());
    let bundle = i.remote_bundle.clone().expect("fetched in XX");
    // B restarted: its cache is empty, while A believes B holds its bundle and sends none.
    let forgetful = ctx(&b, 2);
    let (i, r) = pair_in(&ia, &forgetful, Some(bundle.clone())).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!(i.pattern, Pattern::Ik);
    data_and_ack(&mut i, &mut r).await;
    assert_eq!(forgetful.bundles.len(), 1, "B keeps A's bundle now");
    // And the next session needs no bundle at all.
    let (i, r) = pair_in(&ia, &forgetful, Some(bundle)).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    data_and_ack(&mut i, &mut r).await;
}

/// HELLO v2 and an IK message 1 built by hand: a Noise static key that is not the one in the
/// bundle the payload names.
#[tokio::test]
async fn an_initiator_whose_static_key_is_not_its_bundles_is_refused() {
    let (a, b) = (keys(), keys());
    let responder = ctx(&b, 2);
    // B holds A's real bundle.
    responder
        .bundles
        .insert(a.bundle.current().bundle().clone());
    let rb = b.bundle.current();
    let prologue = handshake::v2::prologue(&a.peer_id(), &b.peer_id());
    let other_static: [u8; 32] = rand::random();
    let mut hs = snow::Builder::new("Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
        .prologue(&prologue)
        .unwrap()
        .local_private_key(&other_static)
        .unwrap()
        .remote_public_key(rb.bundle().x25519_public())
        .unwrap()
        .build_initiator()
        .unwrap();
    let (ct, ss) = rb.bundle().encapsulate();
    let confirm = {
        use sha3::Digest;
        sha3::Sha3_256::new()
            .chain_update(handshake::KEM_CONFIRM_LABEL)
            .chain_update(&ct)
            .chain_update(ss)
            .finalize()
    };
    let eph = crypto::bundle::EphemeralKem::generate(None);
    let payload = [
        &ct[..],
        &confirm[..],
        &eph.public(),
        &a.bundle.current().bundle().id(),
    ]
    .concat();
    let mut msg = vec![0u8; 8192];
    let n = hs.write_message(&payload, &mut msg).unwrap();
    let mut raw = Vec::new();
    Frame::Hello {
        version: 2,
        need_bundle: false,
        bundle_follows: false,
    }
    .encode(&mut raw);
    Frame::Handshake {
        step: 1,
        pattern: Pattern::Ik as u8,
        bundle_id: Some(rb.bundle().id()),
        noise: Bytes::copy_from_slice(&msg[..n]),
    }
    .encode(&mut raw);
    let (mut x, y) = duplex(1 << 20);
    x.write_all(&raw).await.unwrap();
    let (res, reply) = tokio::join!(respond(y, &responder, a.peer_id()), async {
        let mut reply = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut x, &mut reply).await;
        reply
    });
    assert_eq!(
        res.err().and_then(|e| e.code()),
        Some(ErrorCode::HANDSHAKE_FAILED)
    );
    assert_eq!(reply[4], kind::ERROR);
    assert_eq!(
        u16::from_be_bytes([reply[5], reply[6]]),
        ErrorCode::HANDSHAKE_FAILED.0
    );
}

#[tokio::test]
async fn a_session_updates_its_keys_every_few_kilobytes_and_loses_no_frame() {
    let (a, b) = (keys(), keys());
    let policy = RekeyPolicy {
        bytes: 8192,
        interval: Duration::from_secs(3600),
    };
    let (ia, rb) = (ctx(&a, 2).with_rekey(policy), ctx(&b, 2).with_rekey(policy));
    let (i, r) = pair_in(&ia, &rb, None).await;
    let (i, r) = (i.unwrap(), r.unwrap());
    const N: u64 = 300;
    let body = "k".repeat(1000);
    let Session {
        reader: mut i_reader,
        writer: mut i_writer,
        ..
    } = i;
    let Session {
        reader: mut r_reader,
        writer: mut r_writer,
        ..
    } = r;
    // I sends N messages, each after the ACK of the one before (a key update every ~8 of
    // them); R acknowledges each and answers key updates.
    let send = async {
        let mut acked = 0;
        for seq in 1..=N {
            i_writer.send(&data(seq, &body)).await.unwrap();
            while acked < seq {
                match i_reader.recv().await.unwrap() {
                    Some(Inner::Ack { seq, .. }) => acked = seq,
                    Some(Inner::KeyReply { .. }) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        acked
    };
    let receive = async {
        let mut seen = Vec::new();
        while (seen.len() as u64) < N {
            match r_reader.recv().await.unwrap() {
                Some(Inner::Data(d)) => {
                    seen.push(d.seq);
                    r_writer
                        .send(&Inner::Ack {
                            epoch: 7,
                            seq: d.seq,
                        })
                        .await
                        .unwrap();
                }
                Some(Inner::KeyUpdate { .. }) => r_writer.flush().await.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        seen
    };
    let (acked, seen) = tokio::join!(send, receive);
    assert_eq!(acked, N);
    assert_eq!(
        seen,
        (1..=N).collect::<Vec<_>>(),
        "every message, once, in order"
    );
    let (i_updates, r_updates) = (ia.counters.key_updates(), rb.counters.key_updates());
    // ~300 kB at one update per 8 KiB: dozens; the responder's count may trail by the one
    // whose KEY_DONE is still on its way.
    assert!(i_updates >= 20, "initiator finished {i_updates} updates");
    assert!(
        r_updates + 1 >= i_updates && r_updates <= i_updates,
        "responder finished {r_updates}, initiator {i_updates}"
    );
}

#[tokio::test]
async fn key_update_frames_out_of_place_end_the_session() {
    let (a, b) = (keys(), keys());
    let (ia, rb) = (ctx(&a, 2), ctx(&b, 2));
    // The responder may not start a key update.
    let (i, r) = pair_in(&ia, &rb, None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    let ek = crypto::bundle::EphemeralKem::generate(None).public();
    r.writer
        .send(&Inner::KeyUpdate { ek: ek.into() })
        .await
        .unwrap();
    let e = i.reader.recv().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNEXPECTED_FRAME), "{e}");
    // KEY_DONE without a KEY_UPDATE.
    let (i, r) = pair_in(&ia, &rb, None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    i.writer.send(&Inner::KeyDone).await.unwrap();
    let e = r.reader.recv().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNEXPECTED_FRAME), "{e}");
    // A version 2 frame in a version 1 session.
    let (i, r) = pair_in(&ctx(&a, 1), &ctx(&b, 1), None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    i.writer.send(&Inner::Finished).await.unwrap();
    let e = r.reader.recv().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNEXPECTED_FRAME), "{e}");
}

#[tokio::test]
async fn a_session_updates_its_keys_after_the_configured_time() {
    let (a, b) = (keys(), keys());
    let policy = RekeyPolicy {
        bytes: 1 << 30,
        interval: Duration::from_millis(20),
    };
    let (ia, rb) = (ctx(&a, 2).with_rekey(policy), ctx(&b, 2));
    let (i, r) = pair_in(&ia, &rb, None).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    // A message every 30 ms, each acknowledged: a key update is due at every one after the
    // first (the stimulus is the clock; nothing waits on it).
    for seq in 1..=6 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        i.writer.send(&data(seq, "tick")).await.unwrap();
        loop {
            match r.reader.recv().await.unwrap() {
                Some(Inner::Data(d)) => {
                    assert_eq!(d.seq, seq, "in order, none lost");
                    break;
                }
                Some(Inner::KeyUpdate { .. }) => r.writer.flush().await.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        r.writer.send(&Inner::Ack { epoch: 7, seq }).await.unwrap();
        loop {
            match i.reader.recv().await.unwrap() {
                Some(Inner::Ack { seq: s, .. }) if s == seq => break,
                Some(Inner::KeyReply { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(i.key_updates() >= 4, "{} updates", i.key_updates());
    assert!(r.key_updates() + 1 >= i.key_updates());
}

#[tokio::test]
async fn a_forged_initiator_bundle_is_refused_by_the_responder() {
    let (a, b, mallory) = (keys(), keys(), keys());
    let responder = ctx(&b, 2);
    // A's HELLO and "its" bundle, which is Mallory's.
    let mut raw = Vec::new();
    Frame::Hello {
        version: 2,
        need_bundle: true,
        bundle_follows: true,
    }
    .encode(&mut raw);
    Frame::Bundle(Bytes::copy_from_slice(
        mallory.bundle.current().bundle().as_bytes(),
    ))
    .encode(&mut raw);
    let (mut x, y) = duplex(1 << 20);
    x.write_all(&raw).await.unwrap();
    let (res, _) = tokio::join!(respond(y, &responder, a.peer_id()), async {
        let mut reply = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut x, &mut reply).await;
    });
    assert_eq!(
        res.err().and_then(|e| e.code()),
        Some(ErrorCode::BAD_BUNDLE)
    );
    assert!(responder.bundles.is_empty(), "nothing forged is cached");
}
