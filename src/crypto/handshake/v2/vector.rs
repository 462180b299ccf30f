//! `protocols/vectors/data-v2-session.json`: one version 2 XX handshake (first contact) with fixed
//! keys and randomness, its session keys, the first SEALED frame (FINISHED), and one key update.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::{
    crypto::{
        aead::Sealer,
        handshake::vector::{arr, assert_reproduces, fill, h},
    },
    identity::Identity,
};

#[derive(Deserialize, Serialize)]
pub(super) struct SessionVector {
    initiator_ed25519_secret: String,
    initiator_ml_dsa_seed: String,
    responder_ed25519_secret: String,
    responder_ml_dsa_seed: String,
    bundle_created_at: u64,
    initiator_x25519_secret: String,
    initiator_ml_kem_seed: String,
    responder_x25519_secret: String,
    responder_ml_kem_seed: String,
    initiator_peer_id: String,
    responder_peer_id: String,
    initiator_bundle_id: String,
    responder_bundle_id: String,
    initiator_ephemeral: String,
    responder_ephemeral: String,
    initiator_ephemeral_ml_kem_seed: String,
    kem_m_responder: String,
    kem_m_ephemeral: String,
    kem_m_initiator: String,
    prologue: String,
    msg1: String,
    msg2: String,
    msg3: String,
    ss_responder: String,
    ss_ephemeral: String,
    ss_initiator: String,
    handshake_hash: String,
    root: String,
    initiator_to_responder: String,
    responder_to_initiator: String,
    first_sealed_finished: String,
    key_update_ml_kem_seed: String,
    key_update_m: String,
    key_update_ek: String,
    key_reply_ct: String,
    key_update_secret: String,
    next_root: String,
    next_initiator_to_responder: String,
    next_responder_to_initiator: String,
}

pub(super) fn compute() -> SessionVector {
    let ia = Identity::from_secrets(arr(&fill(0x00, 32)), arr(&fill(0x20, 32)));
    let ra = Identity::from_secrets(arr(&fill(0x40, 32)), arr(&fill(0x60, 32)));
    let created = 1_700_000_000;
    let ik = Arc::new(bundle::Keys::from_secrets(
        &ia,
        created,
        arr(&fill(0x80, 32)),
        arr(&fill(0x90, 64)),
    ));
    let rk = Arc::new(bundle::Keys::from_secrets(
        &ra,
        created,
        arr(&fill(0xa0, 32)),
        arr(&fill(0xb0, 64)),
    ));
    let fi = InitiatorFixed {
        ephemeral: arr(&fill(0xd0, 32)),
        kem_m: arr(&fill(0xf0, 32)),
        ephemeral_kem_seed: arr(&fill(0x10, 64)),
    };
    let fr = ResponderFixed {
        ephemeral: arr(&fill(0xe0, 32)),
        kem_m_ephemeral: arr(&fill(0x30, 32)),
        kem_m_initiator: arr(&fill(0x50, 32)),
    };
    let (ip, rp) = (ia.peer_id(), ra.peer_id());
    let (mut i, msg1) = Initiator::start_xx(ik.clone(), &ip, &rp, Some(fi)).unwrap();
    let step1 =
        Responder::read_step1(rk.clone(), Pattern::Xx, &msg1, &ip, Some(fr.ephemeral)).unwrap();
    let (mut r, msg2) = step1.reply(ik.bundle(), Some(fr)).unwrap();
    let msg3 = i.read_step2(&msg2, Some(rk.bundle())).unwrap().unwrap();
    r.read_step3(&msg3).unwrap();
    let secrets = r.secrets.map(Option::unwrap);
    let keys = i.finish().unwrap();
    assert_eq!(keys, r.finish().unwrap());
    let mut sealed = Vec::new();
    Sealer::new(&keys.initiator_to_responder)
        .seal_frame(&[crate::wire::kind::FINISHED], &mut sealed)
        .unwrap();
    // A key update: the initiator's fresh key pair, the responder's ciphertext to it.
    let update_seed: [u8; 64] = arr(&fill(0x70, 64));
    let update_m: [u8; 32] = arr(&fill(0xc0, 32));
    let kem = EphemeralKem::generate(Some(update_seed));
    let ek = kem.public();
    let (ct, ss) = bundle::encapsulate_to(&ek, Some(&update_m)).unwrap();
    assert_eq!(kem.decapsulate(&ct).unwrap(), ss);
    let next = next_keys(&keys, &ss);
    SessionVector {
        initiator_ed25519_secret: h(fill(0x00, 32)),
        initiator_ml_dsa_seed: h(fill(0x20, 32)),
        responder_ed25519_secret: h(fill(0x40, 32)),
        responder_ml_dsa_seed: h(fill(0x60, 32)),
        bundle_created_at: created,
        initiator_x25519_secret: h(fill(0x80, 32)),
        initiator_ml_kem_seed: h(fill(0x90, 64)),
        responder_x25519_secret: h(fill(0xa0, 32)),
        responder_ml_kem_seed: h(fill(0xb0, 64)),
        initiator_peer_id: h(ip.to_bytes()),
        responder_peer_id: h(rp.to_bytes()),
        initiator_bundle_id: h(ik.bundle().id()),
        responder_bundle_id: h(rk.bundle().id()),
        initiator_ephemeral: h(fi.ephemeral),
        responder_ephemeral: h(fr.ephemeral),
        initiator_ephemeral_ml_kem_seed: h(fi.ephemeral_kem_seed),
        kem_m_responder: h(fi.kem_m),
        kem_m_ephemeral: h(fr.kem_m_ephemeral),
        kem_m_initiator: h(fr.kem_m_initiator),
        prologue: h(prologue(&ip, &rp)),
        msg1: h(&msg1),
        msg2: h(&msg2),
        msg3: h(&msg3),
        ss_responder: h(secrets[0]),
        ss_ephemeral: h(secrets[1]),
        ss_initiator: h(secrets[2]),
        handshake_hash: h(keys.handshake_hash),
        root: h(keys.root),
        initiator_to_responder: h(keys.initiator_to_responder),
        responder_to_initiator: h(keys.responder_to_initiator),
        first_sealed_finished: h(&sealed),
        key_update_ml_kem_seed: h(update_seed),
        key_update_m: h(update_m),
        key_update_ek: h(&ek),
        key_reply_ct: h(&ct),
        key_update_secret: h(ss),
        next_root: h(next.root),
        next_initiator_to_responder: h(next.initiator_to_responder),
        next_responder_to_initiator: h(next.responder_to_initiator),
    }
}

#[test]
fn session_vector_reproduces_byte_for_byte() {
    assert_reproduces(
        include_str!("../../../../protocols/vectors/data-v2-session.json"),
        compute(),
    );
}

#[test]
#[ignore = "writes the vector file; run by hand after a deliberate format change"]
fn print_session_vector() {
    let mut v = serde_json::to_value(compute()).unwrap();
    v.as_object_mut().unwrap().insert(
        "description".into(),
        "protocols/data-v2.md §3, §5: a version 2 handshake at first contact (Noise XX) with fixed \
         keys and randomness, and one key update. Secrets and seeds as in data-v1-session.json; \
         `first_sealed_finished` is the initiator's FINISHED (counter 0); key_update_* is an \
         update's ML-KEM-768 key pair seed (d ‖ z), FIPS 203 message, key, ciphertext and secret."
            .into(),
    );
    println!("VECTOR {}", serde_json::to_string_pretty(&v).unwrap());
}
