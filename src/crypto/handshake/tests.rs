use super::*;

fn pair() -> (Identity, bundle::Keys, Identity, bundle::Keys) {
    let a = Identity::generate();
    let ak = bundle::Keys::generate(&a);
    let b = Identity::generate();
    let bk = bundle::Keys::generate(&b);
    (a, ak, b, bk)
}

/// A bare snow initiator towards `bk`, to write first messages `Initiator` never would.
fn raw_initiator(pattern: Pattern, ak: &bundle::Keys, bk: &bundle::Keys) -> snow::HandshakeState {
    pattern
        .builder()
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(ak.x25519_secret())
        .unwrap()
        .remote_public_key(bk.bundle().x25519_public())
        .unwrap()
        .build_initiator()
        .unwrap()
}

fn run(pattern: Pattern, ik: &bundle::Keys, rk: &bundle::Keys) -> (SessionKeys, SessionKeys) {
    let (mut i, m1) = Initiator::start(ik, rk.bundle(), pattern).unwrap();
    let (mut r, m2) = Responder::read_step1(rk, pattern, &m1).unwrap();
    if let Some(m3) = i.read_step2(&m2).unwrap() {
        r.read_step3(&m3).unwrap();
    }
    (i.finish().unwrap(), r.finish().unwrap())
}

#[test]
fn both_patterns_agree_on_keys() {
    let (_, ak, _, bk) = pair();
    for p in [Pattern::Xk, Pattern::Ik] {
        let (i, r) = run(p, &ak, &bk);
        assert_eq!(i, r);
        assert_ne!(i.initiator_to_responder, i.responder_to_initiator);
    }
}

#[test]
fn a_wrong_kem_ciphertext_is_caught_by_key_confirmation() {
    let (_, ak, _, bk) = pair();
    let (_, carol_keys, _, _) = pair();
    // Noise to bob, but the ML-KEM ciphertext for carol's key: bob's decapsulation yields an
    // unrelated secret (implicit rejection) and the confirmation hash does not match.
    let mut hs = raw_initiator(Pattern::Xk, &ak, &bk);
    let (ct, ss) = carol_keys.bundle().encapsulate();
    let m1 = write(&mut hs, &[&ct[..], &kem_confirm(&ct, &ss)].concat()).unwrap();
    assert!(matches!(
        Responder::read_step1(&bk, Pattern::Xk, &m1),
        Err(Error::BadKemCiphertext)
    ));
    // A payload of the wrong length is the same error.
    let mut hs = raw_initiator(Pattern::Ik, &ak, &bk);
    let m1 = write(&mut hs, &[0u8; 100]).unwrap();
    assert!(matches!(
        Responder::read_step1(&bk, Pattern::Ik, &m1),
        Err(Error::BadKemCiphertext)
    ));
}

#[test]
fn transcripts_bind_roles_and_peers() {
    let (a, ak, b, bk) = pair();
    let (keys, _) = run(Pattern::Xk, &ak, &bk);
    let h = keys.handshake_hash;
    let sig = sign_transcript(&a, Role::Initiator, &a.peer_id(), &b.peer_id(), &h);
    verify_transcript(
        a.binding(),
        &sig,
        Role::Initiator,
        &a.peer_id(),
        &b.peer_id(),
        &h,
    )
    .unwrap();
    assert!(
        verify_transcript(
            a.binding(),
            &sig,
            Role::Responder,
            &a.peer_id(),
            &b.peer_id(),
            &h
        )
        .is_err()
    );
    assert!(
        verify_transcript(
            b.binding(),
            &sig,
            Role::Initiator,
            &a.peer_id(),
            &b.peer_id(),
            &h
        )
        .is_err()
    );
    let mut other = h;
    other[0] ^= 1;
    assert!(
        verify_transcript(
            a.binding(),
            &sig,
            Role::Initiator,
            &a.peer_id(),
            &b.peer_id(),
            &other
        )
        .is_err()
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever arrives as Noise message 1, 2 or 3: an error, never a panic.
    #[test]
    fn arbitrary_handshake_messages_are_errors(msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
        let (_, ak, _, bk) = pair();
        for p in [Pattern::Xk, Pattern::Ik] {
            let _ = Responder::read_step1(&bk, p, &msg);
            let (mut i, _) = Initiator::start(&ak, bk.bundle(), p).unwrap();
            let _ = i.read_step2(&msg);
        }
        let (_, m1) = Initiator::start(&ak, bk.bundle(), Pattern::Xk).unwrap();
        let (mut r, _) = Responder::read_step1(&bk, Pattern::Xk, &m1).unwrap();
        let _ = r.read_step3(&msg);
    }

    /// Bundles and presence records from peers: parsed or refused, never a panic.
    #[test]
    fn arbitrary_bundles_and_records_are_errors(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..bundle::BUNDLE_LEN + 10),
        flip in 0..bundle::BUNDLE_LEN,
    ) {
        let (a, ak, _, _) = pair();
        let _ = Bundle::verify(&bytes, &a.peer_id());
        let mut b = ak.bundle().as_bytes().to_vec();
        b[flip] ^= 0xff;
        proptest::prop_assert!(Bundle::verify(&b, &a.peer_id()).is_err());
        let key = crate::dht::record::key(&a.peer_id());
        let _ = crate::dht::record::verify(key.as_ref(), &bytes, 0);
    }
}

#[test]
fn tampered_noise_messages_fail() {
    let (_, ak, _, bk) = pair();
    let (_, mut m1) = Initiator::start(&ak, bk.bundle(), Pattern::Ik).unwrap();
    m1[40] ^= 1;
    assert!(Responder::read_step1(&bk, Pattern::Ik, &m1).is_err());
}
