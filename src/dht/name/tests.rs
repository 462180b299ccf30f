use super::*;

const NOW: u64 = 1_000_000;

fn alice() -> Handle {
    Handle::parse("alice").unwrap()
}

fn claim(id: &Identity, seq: u64) -> (Vec<u8>, Name) {
    let v = sign(id, &alice(), seq, NOW + 3600, false);
    let n = verify(key(&alice()).as_ref(), &v, NOW).unwrap();
    (v, n)
}

#[test]
fn genuine_records_verify_and_tampered_ones_do_not() {
    let id = Identity::generate();
    let (v, n) = claim(&id, 5);
    assert!(v.len() <= MAX_RECORD_BYTES, "{} bytes", v.len());
    assert_eq!(MAX_RECORD_BYTES, 8814, "as names-v1.md §4 says");
    assert_eq!(
        (n.handle.as_str(), n.peer, n.seq),
        ("alice", id.peer_id(), 5)
    );
    assert!(n.holds(NOW) && !n.holds(NOW + 3600));
    let k = key(&alice());
    // Any changed byte breaks a signature or the format.
    for i in [0, 1, 5, 20, 30, 100, v.len() / 2, v.len() - 1] {
        let mut t = v.clone();
        t[i] ^= 1;
        assert!(verify(k.as_ref(), &t, NOW).is_err(), "byte {i}");
    }
    // Under another handle's key; truncated; expired; too far ahead.
    let bob = key(&Handle::parse("bob").unwrap());
    assert_eq!(
        verify(bob.as_ref(), &v, NOW).unwrap_err(),
        Reject::Malformed
    );
    assert_eq!(
        verify(k.as_ref(), &v[..300], NOW).unwrap_err(),
        Reject::Malformed
    );
    assert_eq!(
        verify(k.as_ref(), &v, NOW + 3600).unwrap_err(),
        Reject::Expired
    );
    let far = sign(&id, &alice(), 6, NOW + MAX_TTL_SECS + 1, false);
    assert_eq!(verify(k.as_ref(), &far, NOW).unwrap_err(), Reject::Expired);
}

#[test]
fn handles_must_be_stored_normalised_under_their_skeleton() {
    let id = Identity::generate();
    let k = key(&alice());
    let fields = |handle| Fields {
        handle,
        seq: 1,
        expires_at: NOW + 60,
        flags: 0,
    };
    let upper = sign_fields(&id, k.as_ref(), &fields("Alice"));
    assert_eq!(
        verify(k.as_ref(), &upper, NOW).unwrap_err(),
        Reject::Unnormalised
    );
    let cyrillic = sign_fields(&id, k.as_ref(), &fields("аlice"));
    assert_eq!(
        verify(k.as_ref(), &cyrillic, NOW).unwrap_err(),
        Reject::Unnormalised
    );
    // A look-alike is stored under the same key as the original, so it meets its record.
    let a1 = Handle::parse("a1ice").unwrap();
    assert_eq!(key(&a1), k);
    let v = sign(&id, &a1, 1, NOW + 60, false);
    assert!(verify(k.as_ref(), &v, NOW).is_ok());
    let unknown_flag = sign_fields(
        &id,
        k.as_ref(),
        &Fields {
            flags: 2,
            ..fields("alice")
        },
    );
    assert_eq!(
        verify(k.as_ref(), &unknown_flag, NOW).unwrap_err(),
        Reject::Malformed
    );
}

#[test]
fn a_live_name_is_refused_to_other_keys_until_it_expires_or_is_released() {
    let owner = Identity::generate();
    let other = Identity::generate();
    let (v5, n5) = claim(&owner, 5);
    let (v6, n6) = claim(&owner, 6);
    let (w, theirs) = claim(&other, 9);
    let cur = Some((&n5, v5.as_slice()));
    assert_eq!(admits(None, &n5, &v5, NOW), Ok(true));
    assert_eq!(
        admits(cur, &n6, &v6, NOW),
        Ok(true),
        "the owner's newer record"
    );
    assert_eq!(admits(Some((&n6, &v6)), &n5, &v5, NOW), Err(Reject::Stale));
    assert_eq!(
        admits(cur, &n5, &v5, NOW),
        Ok(false),
        "the same record again"
    );
    assert_eq!(admits(cur, &theirs, &w, NOW), Err(Reject::Taken));
    assert_eq!(
        admits(cur, &theirs, &w, NOW + 3600),
        Ok(true),
        "after the owner's record expired"
    );
    let released = sign(&owner, &alice(), 7, NOW + 600, true);
    let r = verify(key(&alice()).as_ref(), &released, NOW).unwrap();
    assert!(r.released && !r.holds(NOW));
    assert_eq!(admits(cur, &r, &released, NOW), Ok(true));
    assert_eq!(admits(Some((&r, &released)), &theirs, &w, NOW), Ok(true));
    let same_seq = sign(&owner, &alice(), 5, NOW + 601, false);
    let s = verify(key(&alice()).as_ref(), &same_seq, NOW).unwrap();
    assert_eq!(admits(cur, &s, &same_seq, NOW), Err(Reject::Equivocation));
}

#[derive(serde::Deserialize)]
struct Vector {
    handle_typed: String,
    handle: String,
    skeleton: String,
    key: String,
    value: String,
    seq: u64,
    expires_at: u64,
    verify_at: u64,
}

fn vector_identity() -> Identity {
    let seed = |start: u8| -> [u8; 32] { std::array::from_fn(|i| start.wrapping_add(i as u8)) };
    Identity::from_secrets(seed(0x00), seed(0x20))
}

#[test]
fn spec_vector_reproduces_byte_for_byte() {
    let v: Vector =
        serde_json::from_str(include_str!("../../../protocols/vectors/names-v1.json")).unwrap();
    let id = vector_identity();
    let handle = Handle::parse(&v.handle_typed).unwrap();
    assert_eq!(
        (handle.as_str(), handle.skeleton()),
        (v.handle.as_str(), v.skeleton)
    );
    assert_eq!(hex::encode(key(&handle).as_ref()), v.key);
    assert_eq!(
        hex::encode(sign(&id, &handle, v.seq, v.expires_at, false)),
        v.value
    );
    let n = verify(
        &hex::decode(&v.key).unwrap(),
        &hex::decode(&v.value).unwrap(),
        v.verify_at,
    )
    .unwrap();
    assert_eq!(
        (n.peer, n.seq, n.expires_at),
        (id.peer_id(), v.seq, v.expires_at)
    );
}

#[test]
#[ignore = "prints the vector; run by hand after a deliberate format change"]
fn print_vector() {
    let id = vector_identity();
    let handle = Handle::parse("ＡLice-01").unwrap();
    let (seq, expires_at) = (1_700_000_000_000u64, 1_700_003_600u64);
    println!(
        "VECTOR {}",
        serde_json::json!({
            "description": "protocols/names-v1.md: the identity-v1 vector identity claims `ＡLice-01` (a full-width A), seq 1700000000000, expires_at 1700003600, not released.",
            "peer_id": id.peer_id().to_string(),
            "handle_typed": "ＡLice-01",
            "handle": handle.as_str(),
            "skeleton": handle.skeleton(),
            "seq": seq,
            "expires_at": expires_at,
            "verify_at": 1_700_000_000u64,
            "key": hex::encode(key(&handle).as_ref()),
            "value": hex::encode(sign(&id, &handle, seq, expires_at, false)),
        })
    );
}
