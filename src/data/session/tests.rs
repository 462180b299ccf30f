//! Sessions over in-memory pipes: both patterns, and each kind of bad input rejected with the code
//! the spec gives.

use std::sync::Arc;

use sha3::Digest;
use tokio::io::{AsyncReadExt, DuplexStream, duplex};

use super::*;
use crate::{
    identity::Identity,
    wire::{Data, kind},
};

pub(super) fn keys() -> Arc<LocalKeys> {
    Arc::new(LocalKeys::generate())
}

/// A context speaking at most `version`.
pub(super) fn ctx(k: &Arc<LocalKeys>, version: u8) -> Context {
    Context::new(k.clone()).with_version(version)
}

/// The code of the first ERROR frame among the cleartext frames in `reply`.
fn error_code_in(reply: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 5 <= reply.len() {
        let len = u32::from_be_bytes(reply[at..at + 4].try_into().unwrap()) as usize;
        if reply[at + 4] == kind::ERROR && at + 7 <= reply.len() {
            return Some(u16::from_be_bytes([reply[at + 5], reply[at + 6]]));
        }
        at += 4 + len;
    }
    None
}

fn pipe() -> (DuplexStream, DuplexStream) {
    duplex(1 << 20)
}

pub(super) type Pair = (
    Result<Session<DuplexStream>, Error>,
    Result<Session<DuplexStream>, Error>,
);

/// A session from A to B over a pipe, both speaking at most `version`.
async fn pair(a: &Arc<LocalKeys>, b: &Arc<LocalKeys>, known: Option<Bundle>, version: u8) -> Pair {
    pair_in(&ctx(a, version), &ctx(b, version), known).await
}

pub(super) async fn pair_in(a: &Context, b: &Context, known: Option<Bundle>) -> Pair {
    let (x, y) = pipe();
    tokio::join!(
        initiate(x, a, b.keys.peer_id(), known),
        respond(y, b, a.keys.peer_id())
    )
}

pub(super) fn data(seq: u64, body: &str) -> Inner {
    Inner::Data(Data {
        epoch: 7,
        seq,
        msg_id: [seq as u8; 16],
        sent_at_ms: 1,
        via: Default::default(),
        group: None,
        body: body.into(),
    })
}

/// A DATA frame from I reaches R, and an ACK comes back.
pub(super) async fn data_and_ack(i: &mut Session<DuplexStream>, r: &mut Session<DuplexStream>) {
    i.writer.send(&data(1, "hello")).await.unwrap();
    assert_eq!(r.reader.recv().await.unwrap(), Some(data(1, "hello")));
    r.writer
        .send(&Inner::Ack { epoch: 7, seq: 1 })
        .await
        .unwrap();
    assert_eq!(
        i.reader.recv().await.unwrap(),
        Some(Inner::Ack { epoch: 7, seq: 1 })
    );
}

#[tokio::test]
async fn xk_then_ik_sessions_carry_frames_both_ways() {
    for version in [1, 2] {
        xk_then_ik(version).await;
    }
}

async fn xk_then_ik(version: u8) {
    let (a, b) = (keys(), keys());
    let (i, r) = pair(&a, &b, None, version).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!((i.version, r.version), (version, version));
    let first = if version == 1 {
        Pattern::Xk
    } else {
        Pattern::Xx
    };
    assert_eq!(i.pattern, first);
    assert_eq!(r.remote, a.identity.peer_id());
    data_and_ack(&mut i, &mut r).await;

    // With the bundle from the first session, the next one is IK.
    let bundle = i.remote_bundle.clone().unwrap();
    let (i, r) = pair(&a, &b, Some(bundle), version).await;
    let (mut i, mut r) = (i.unwrap(), r.unwrap());
    assert_eq!(i.pattern, Pattern::Ik);
    i.writer.send(&data(2, "again")).await.unwrap();
    assert_eq!(r.reader.recv().await.unwrap(), Some(data(2, "again")));
}

#[tokio::test]
async fn tampered_and_replayed_frames_end_the_session_with_the_right_error() {
    let (a, b) = (keys(), keys());
    for (case, expected, version) in [
        ("tamper", ErrorCode::DECRYPT_FAILED, 1),
        ("replay", ErrorCode::REPLAY, 1),
        ("skip", ErrorCode::OUT_OF_ORDER, 1),
        ("tamper", ErrorCode::DECRYPT_FAILED, 2),
        ("replay", ErrorCode::REPLAY, 2),
        ("skip", ErrorCode::OUT_OF_ORDER, 2),
    ] {
        let (i, r) = pair(&a, &b, None, version).await;
        let (mut i, mut r) = (i.unwrap(), r.unwrap());
        let first = i.writer.seal_detached(&data(1, "one")).unwrap();
        match case {
            "tamper" => {
                let mut bad = first.clone();
                let last = bad.len() - 20;
                bad[last] ^= 0x01;
                i.writer.write_raw(&bad).await.unwrap();
            }
            "replay" => {
                i.writer.write_raw(&first).await.unwrap();
                assert_eq!(r.reader.recv().await.unwrap(), Some(data(1, "one")));
                i.writer.write_raw(&first).await.unwrap();
            }
            _ => {
                let second = i.writer.seal_detached(&data(2, "two")).unwrap();
                i.writer.write_raw(&second).await.unwrap();
            }
        }
        let err = r.reader.recv().await.unwrap_err();
        assert_eq!(err.code(), Some(expected), "{case} v{version}: {err}");
        // The receiver tells the sender.
        r.writer.fail(expected, &err.to_string()).await;
        let told = i.reader.recv().await.unwrap_err();
        assert_eq!(told.code(), Some(expected), "{case}: sender hears {told}");
    }
}

#[tokio::test]
async fn a_forged_bundle_is_rejected_by_the_initiator() {
    for version in [1, 2] {
        forged_bundle(version).await;
    }
}

async fn forged_bundle(version: u8) {
    let (a, b, mallory) = (keys(), keys(), keys());
    let (x, mut y) = pipe();
    let mallory_responder = async {
        // B's stream answers HELLO with Mallory's bundle.
        let mut hello = [0u8; 7];
        y.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[5], version);
        let mut out = Vec::new();
        Frame::Bundle(Bytes::copy_from_slice(
            mallory.bundle.current().bundle().as_bytes(),
        ))
        .encode(&mut out);
        y.write_all(&out).await.unwrap();
        let mut reply = Vec::new();
        let _ = y.read_to_end(&mut reply).await;
        reply
    };
    let c = ctx(&a, version);
    let (res, reply) = tokio::join!(
        initiate(x, &c, b.identity.peer_id(), None),
        mallory_responder
    );
    assert_eq!(
        res.err().and_then(|e| e.code()),
        Some(ErrorCode::BAD_BUNDLE)
    );
    // The initiator said why before closing: a cleartext ERROR frame with code 9 (in version 2
    // after its own BUNDLE).
    assert_eq!(error_code_in(&reply), Some(9));
}

/// Feeds raw bytes to a responder and returns the ERROR code it answers with.
async fn responder_answer(raw: &[u8]) -> Option<u16> {
    let b = keys();
    let (mut x, y) = pipe();
    let peer = Identity::generate().peer_id();
    x.write_all(raw).await.unwrap();
    let c = ctx(&b, 2);
    let (res, reply) = tokio::join!(respond(y, &c, peer), async {
        let mut reply = Vec::new();
        let _ = x.read_to_end(&mut reply).await;
        reply
    });
    assert!(res.is_err());
    (reply.len() >= 7 && reply[4] == kind::ERROR).then(|| u16::from_be_bytes([reply[5], reply[6]]))
}

#[tokio::test]
async fn bad_first_frames_get_the_spec_codes() {
    // DATA before the handshake (an inner type outside SEALED).
    assert_eq!(responder_answer(&[0, 0, 0, 1, kind::DATA]).await, Some(5));
    // Oversized frame: refused from its header.
    assert_eq!(
        responder_answer(&[0x00, 0x10, 0x00, 0x00, kind::HELLO]).await,
        Some(3)
    );
    // Unknown frame type.
    assert_eq!(responder_answer(&[0, 0, 0, 1, 0x7e]).await, Some(4));
    // Wrong version.
    assert_eq!(
        responder_answer(&[0, 0, 0, 3, kind::HELLO, 9, 0]).await,
        Some(2)
    );
    // HANDSHAKE naming a bundle the responder does not hold.
    let mut raw = Vec::new();
    Frame::Hello {
        version: 1,
        need_bundle: false,
        bundle_follows: false,
    }
    .encode(&mut raw);
    Frame::Handshake {
        step: 1,
        pattern: 2,
        bundle_id: Some([0; 16]),
        noise: Bytes::from_static(&[0; 64]),
    }
    .encode(&mut raw);
    assert_eq!(responder_answer(&raw).await, Some(14));
}

#[tokio::test]
async fn counters_count_completed_handshakes() {
    for version in [1, 2] {
        let (a, b) = (keys(), keys());
        let (c, d) = (ctx(&a, version), ctx(&b, version));
        let (i, r) = pair_in(&c, &d, None).await;
        let (mut i, r) = (i.unwrap(), r.unwrap());
        let (c, d) = (&c.counters, &d.counters);
        assert_eq!(
            (d.noise(), d.post_quantum()),
            (1, 1),
            "responder, v{version}"
        );
        if version == 2 {
            // The initiator counts once the responder's FINISHED arrives, ahead of any frame.
            assert_eq!((c.noise(), c.post_quantum()), (1, 0));
            let mut r = r;
            r.writer.send(&Inner::Ping(1)).await.unwrap();
            assert_eq!(i.reader.recv().await.unwrap(), Some(Inner::Ping(1)));
        }
        assert_eq!(
            (c.noise(), c.post_quantum()),
            (1, 1),
            "initiator, v{version}"
        );
    }
}

/// Runs a responder against frames crafted by `craft` (which gets the responder's keys and writes
/// raw bytes) and returns the responder's result.
async fn craft_against_responder<F, Fut>(craft: F) -> Result<Session<DuplexStream>, Error>
where
    F: FnOnce(Arc<LocalKeys>, DuplexStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let b = keys();
    let (x, y) = pipe();
    let peer = Identity::generate().peer_id();
    let c = ctx(&b, 2);
    let (res, ()) = tokio::join!(respond(y, &c, peer), craft(b.clone(), x));
    res
}

/// Sends HELLO and an IK message 1 whose payload is `payload`; returns the Noise state.
async fn ik_step1(
    a: &LocalKeys,
    b: &LocalKeys,
    x: &mut DuplexStream,
    payload: &[u8],
) -> snow::HandshakeState {
    let mut hs = snow::Builder::new("Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
        .prologue(handshake::PROLOGUE)
        .unwrap()
        .local_private_key(a.bundle.current().x25519_secret())
        .unwrap()
        .remote_public_key(b.bundle.current().bundle().x25519_public())
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg = vec![0u8; 4096];
    let n = hs.write_message(payload, &mut msg).unwrap();
    let mut out = Vec::new();
    Frame::Hello {
        version: 1,
        need_bundle: false,
        bundle_follows: false,
    }
    .encode(&mut out);
    Frame::Handshake {
        step: 1,
        pattern: Pattern::Ik as u8,
        bundle_id: Some(b.bundle.current().bundle().id()),
        noise: Bytes::copy_from_slice(&msg[..n]),
    }
    .encode(&mut out);
    x.write_all(&out).await.unwrap();
    hs
}

/// Reads whatever comes back until the responder closes.
async fn drain(x: &mut DuplexStream) -> Vec<u8> {
    let mut reply = Vec::new();
    let _ = x.read_to_end(&mut reply).await;
    reply
}

#[tokio::test]
async fn a_wrong_kem_ciphertext_gets_bad_kem_ciphertext() {
    let a = keys();
    let mut reply = Vec::new();
    let res = craft_against_responder(|b, mut x| {
        let a = &a;
        let reply = &mut reply;
        async move {
            // A ciphertext for someone else's ML-KEM key, with its own (valid) confirmation.
            let other = keys();
            let (ct, ss) = other.bundle.current().bundle().encapsulate();
            let confirm = sha3::Sha3_256::new()
                .chain_update(handshake::KEM_CONFIRM_LABEL)
                .chain_update(&ct)
                .chain_update(ss)
                .finalize();
            ik_step1(a, &b, &mut x, &[&ct[..], &confirm[..]].concat()).await;
            *reply = drain(&mut x).await;
        }
    })
    .await;
    assert_eq!(
        res.err().and_then(|e| e.code()),
        Some(ErrorCode::BAD_KEM_CIPHERTEXT)
    );
    // The cleartext ERROR it sent: after HANDSHAKE nothing else came, so it is the first frame.
    assert_eq!(reply[4], kind::ERROR);
    assert_eq!(
        u16::from_be_bytes([reply[5], reply[6]]),
        ErrorCode::BAD_KEM_CIPHERTEXT.0
    );
}

#[tokio::test]
async fn a_bad_transcript_signature_gets_bad_signature() {
    let a = keys();
    let res = craft_against_responder(|b, mut x| {
        let a = &a;
        async move {
            let (ct, ss) = b.bundle.current().bundle().encapsulate();
            let confirm = sha3::Sha3_256::new()
                .chain_update(handshake::KEM_CONFIRM_LABEL)
                .chain_update(&ct)
                .chain_update(ss)
                .finalize();
            let mut hs = ik_step1(a, &b, &mut x, &[&ct[..], &confirm[..]].concat()).await;
            // Read HANDSHAKE step 2 and finish Noise.
            let mut frames = FramedRead::new(&mut x, FrameCodec);
            let Some(Ok(Frame::Handshake { noise, .. })) = frames.next().await else {
                panic!("no step 2");
            };
            let mut p = vec![0u8; 1024];
            hs.read_message(&noise, &mut p).unwrap();
            let h: [u8; 32] = hs.get_handshake_hash().try_into().unwrap();
            let mut okm = [0u8; 96];
            hkdf::SimpleHkdf::<sha3::Sha3_512>::new(None, &[&h[..], &ss[..]].concat())
                .expand(handshake::SESSION_INFO, &mut okm)
                .unwrap();
            let i2r: [u8; 32] = okm[32..64].try_into().unwrap();
            // AUTH with the real binding but a signature over something else.
            let b_ = a.identity.binding();
            let auth = Inner::Auth {
                binding: Some(crate::wire::BindingParts {
                    ml_dsa_public: Bytes::copy_from_slice(&b_.ml_dsa_public),
                    ed25519_signature: Bytes::copy_from_slice(&b_.ed25519_signature),
                    ml_dsa_signature: Bytes::copy_from_slice(&b_.ml_dsa_signature),
                }),
                signature: a
                    .identity
                    .sign_ml_dsa(b"not the transcript", handshake::TRANSCRIPT_CONTEXT)
                    .into(),
            };
            let mut out = Vec::new();
            Sealer::new(&i2r)
                .seal_with(&mut out, |o| auth.encode(o))
                .unwrap();
            drop(frames);
            x.write_all(&out).await.unwrap();
            drain(&mut x).await;
        }
    })
    .await;
    assert_eq!(
        res.err().and_then(|e| e.code()),
        Some(ErrorCode::BAD_SIGNATURE)
    );
}

/// data-v1 §4.1: after a rotation, a bundle an initiator cached still opens sessions while it is
/// within its grace period, and gets STALE_BUNDLE once that is over.
#[tokio::test]
async fn replaced_bundles_answer_until_they_expire() {
    use crate::crypto::{KeyRing, keyring::Schedule};
    use std::time::Duration;

    let a = keys();
    let rotating = |grace_secs| {
        let identity = Identity::generate();
        let schedule = Schedule {
            rotation: Some(Duration::ZERO),
            grace: Duration::from_secs(grace_secs),
        };
        let bundle = KeyRing::generate(&identity, schedule);
        LocalKeys { identity, bundle }
    };
    for (grace, accepted, version) in [
        (3600, true, 1),
        (0, false, 1),
        (3600, true, 2),
        (0, false, 2),
    ] {
        let b = Arc::new(rotating(grace));
        let (i, _) = pair(&a, &b, None, version).await;
        let old = i.unwrap().remote_bundle.unwrap();
        assert!(b.rotate_if_due().unwrap(), "due at once");
        assert_ne!(b.bundle.current().bundle().id(), old.id());
        let (i, r) = pair(&a, &b, Some(old), version).await;
        if accepted {
            assert_eq!(
                i.unwrap().pattern,
                Pattern::Ik,
                "the replaced bundle still works"
            );
            r.unwrap();
        } else {
            let Err(e) = i else {
                panic!("a session with an expired bundle")
            };
            assert_eq!(
                e.code(),
                Some(ErrorCode::STALE_BUNDLE),
                "an expired bundle is refused"
            );
            assert!(r.is_err());
        }
    }
}
