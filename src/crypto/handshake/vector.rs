//! `protocols/vectors/data-v1-session.json`: one XK handshake with fixed keys and randomness.

use serde::Deserialize;

use super::*;
use crate::crypto::aead::Sealer;

#[derive(Deserialize, serde::Serialize)]
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
    initiator_ephemeral: String,
    responder_ephemeral: String,
    kem_m: String,
    responder_bundle_id: String,
    msg1: String,
    msg2: String,
    msg3: String,
    kem_ciphertext: String,
    kem_shared_secret: String,
    kem_confirm: String,
    handshake_hash: String,
    root: String,
    initiator_to_responder: String,
    responder_to_initiator: String,
    first_sealed_ping: String,
}

/// `n` bytes counting up from `start`: the fixed secrets and randomness of both vectors.
pub(super) fn fill(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start.wrapping_add(i as u8)).collect()
}

pub(super) fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().unwrap()
}

pub(super) fn h(x: impl AsRef<[u8]>) -> String {
    hex::encode(x)
}

/// Every field `computed` has equals the stored vector's (JSON text `stored`).
pub(super) fn assert_reproduces(stored: &str, computed: impl serde::Serialize) {
    let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
    let computed = serde_json::to_value(computed).unwrap();
    for (k, v) in computed.as_object().unwrap() {
        assert_eq!(&stored[k], v, "{k}");
    }
}

pub(super) fn compute() -> SessionVector {
    let ia = Identity::from_secrets(arr(&fill(0x00, 32)), arr(&fill(0x20, 32)));
    let ra = Identity::from_secrets(arr(&fill(0x40, 32)), arr(&fill(0x60, 32)));
    let created = 1_700_000_000;
    let ik = bundle::Keys::from_secrets(&ia, created, arr(&fill(0x80, 32)), arr(&fill(0x90, 64)));
    let rk = bundle::Keys::from_secrets(&ra, created, arr(&fill(0xa0, 32)), arr(&fill(0xb0, 64)));
    let fixed = FixedRandomness {
        ephemeral: arr(&fill(0xd0, 32)),
        kem_m: arr(&fill(0xf0, 32)),
    };
    let r_eph: [u8; 32] = arr(&fill(0xe0, 32));
    let (mut i, msg1) = Initiator::start_with(&ik, rk.bundle(), Pattern::Xk, Some(fixed)).unwrap();
    let (mut r, msg2) = Responder::read_step1_with(&rk, Pattern::Xk, &msg1, Some(r_eph)).unwrap();
    let msg3 = i.read_step2(&msg2).unwrap().unwrap();
    r.read_step3(&msg3).unwrap();
    let (ct, ss) = rk.bundle().encapsulate_deterministic(&fixed.kem_m);
    let keys = i.finish().unwrap();
    assert_eq!(keys, r.finish().unwrap());
    let mut sealed = Vec::new();
    Sealer::new(&keys.initiator_to_responder)
        .seal_frame(&[0x27, 0, 0, 0, 0, 0, 0, 0, 1], &mut sealed)
        .unwrap();
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
        initiator_ephemeral: h(fixed.ephemeral),
        responder_ephemeral: h(r_eph),
        kem_m: h(fixed.kem_m),
        responder_bundle_id: h(rk.bundle().id()),
        msg1: h(&msg1),
        msg2: h(&msg2),
        msg3: h(&msg3),
        kem_ciphertext: h(&ct),
        kem_shared_secret: h(ss),
        kem_confirm: h(kem_confirm(&ct, &ss)),
        handshake_hash: h(keys.handshake_hash),
        root: h(keys.root),
        initiator_to_responder: h(keys.initiator_to_responder),
        responder_to_initiator: h(keys.responder_to_initiator),
        first_sealed_ping: h(&sealed),
    }
}

#[test]
fn session_vector_reproduces_byte_for_byte() {
    assert_reproduces(
        include_str!("../../../protocols/vectors/data-v1-session.json"),
        compute(),
    );
}

#[test]
#[ignore = "writes the vector file; run by hand after a deliberate format change"]
fn print_session_vector() {
    println!(
        "VECTOR {}",
        serde_json::to_string_pretty(&compute()).unwrap()
    );
}
