use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::identity::Identity;

/// A signer and the log it builds on: `sign` appends after the last entry it holds.
fn sign(id: &Identity, log: &Log, op: Op) -> Entry {
    let (seq, prev) = log.next();
    Entry::sign(id, log.group(), seq, prev, op, 1_800_000_000_000)
}

fn admit(log: &mut Log, id: &Identity, op: Op) -> Entry {
    let e = sign(id, log, op);
    assert_eq!(log.admit(e.clone()), Ok(true));
    e
}

struct People {
    a: Identity,
    b: Identity,
    c: Identity,
    d: Identity,
}

/// A creates the group, adds B, C, D and makes B an admin.
fn group() -> (People, Log) {
    let p = People {
        a: Identity::generate(),
        b: Identity::generate(),
        c: Identity::generate(),
        d: Identity::generate(),
    };
    let mut log = Log::new(GroupId::random());
    admit(
        &mut log,
        &p.a,
        Op::Create {
            name: "friends".into(),
        },
    );
    for m in [&p.b, &p.c, &p.d] {
        admit(&mut log, &p.a, Op::Add(m.peer_id()));
    }
    admit(&mut log, &p.a, Op::Admin(p.b.peer_id()));
    (p, log)
}

#[test]
fn the_log_says_who_is_in_and_who_may_change_it() {
    let (p, mut log) = group();
    let s = log.state();
    assert_eq!(s.name, "friends");
    assert_eq!(s.members.len(), 4);
    assert_eq!(s.admins, [p.a.peer_id(), p.b.peer_id()].into());
    admit(&mut log, &p.b, Op::Remove(p.c.peer_id()));
    admit(&mut log, &p.d, Op::Leave);
    let s = log.state();
    assert_eq!(s.members, [p.a.peer_id(), p.b.peer_id()].into());
    assert_eq!(log.head().seq, 7);
    // An entry seen twice changes nothing.
    let again = log.entries().last().unwrap().clone();
    assert_eq!(log.admit(again), Ok(false));
}

#[test]
fn forged_entries_are_rejected() {
    let (p, mut log) = group();
    let before = log.head();

    // Bad signature: one bit of the body changed (the timestamp).
    let good = sign(&p.a, &log, Op::Add(PeerIdOf::random()));
    let mut bytes = good.as_bytes().to_vec();
    bytes[1 + 16 + 8 + 32 + 1 + 1 + 39 + 1 + 7] ^= 1;
    assert_eq!(Entry::verify(&bytes), Err(Reject::BadSignature));
    // Cut short anywhere: malformed, never a panic.
    for cut in [0, 1, 100, good.as_bytes().len() - 1] {
        assert_eq!(
            Entry::verify(&good.as_bytes()[..cut]),
            Err(Reject::Malformed),
            "{cut}"
        );
    }
    // Mallory signs an entry but puts A's binding in it: A's keys did not sign it.
    let mallory = Identity::generate();
    let genuine = sign(&p.a, &log, Op::Add(mallory.peer_id()));
    let forged = sign(&mallory, &log, Op::Add(mallory.peer_id()));
    let at = genuine.as_bytes().len() - crate::identity::SIGNATURES_LEN;
    let swapped = [&genuine.as_bytes()[..at], &forged.as_bytes()[at..]].concat();
    assert_eq!(Entry::verify(&swapped), Err(Reject::BadSignature));

    // A member that is no admin.
    let by_member = sign(&p.c, &log, Op::Add(PeerIdOf::random()));
    assert_eq!(log.admit(by_member), Err(Reject::NotAdmin));
    // A stranger.
    let stranger = Identity::generate();
    let by_stranger = sign(&stranger, &log, Op::Remove(p.a.peer_id()));
    assert_eq!(log.admit(by_stranger), Err(Reject::NotAdmin));

    // Broken chains: a `prev` nobody has, a number that does not follow it.
    let (seq, prev) = log.next();
    let nowhere = Entry::sign(&p.a, log.group(), seq, [7; 32], Op::Leave, 0);
    assert_eq!(log.admit(nowhere), Err(Reject::BrokenChain));
    let skipped = Entry::sign(&p.a, log.group(), seq + 1, prev, Op::Leave, 0);
    assert_eq!(log.admit(skipped), Err(Reject::BrokenChain));

    // A second create, and an entry of another group.
    let recreate = Entry::sign(
        &p.a,
        log.group(),
        1,
        [0; 32],
        Op::Create { name: "x".into() },
        0,
    );
    assert_eq!(log.admit(recreate), Err(Reject::BadCreate));
    let other = Entry::sign(&p.a, GroupId::random(), seq, prev, Op::Leave, 0);
    assert_eq!(log.admit(other), Err(Reject::WrongGroup));

    assert_eq!(log.head(), before, "nothing forged got in");
}

type PeerIdOf = libp2p::PeerId;

/// Admits `entries` in the order given, retrying those whose predecessor has not arrived yet (a
/// sync would fetch it), until all are in.
fn admit_all(log: &mut Log, mut entries: Vec<Entry>) {
    while !entries.is_empty() {
        let before = entries.len();
        entries.retain(|e| match log.admit(e.clone()) {
            Ok(_) => false,
            Err(Reject::BrokenChain | Reject::NotAdmin) => true,
            Err(r) => panic!("{r}"),
        });
        assert!(
            entries.len() < before,
            "stuck: {} entries never fit",
            before
        );
    }
}

/// Two admins change the group while partitioned: A removes C and adds E; B removes D, adds F and
/// makes F an admin, and F adds G. Whatever order the entries reach a member in, every member
/// ends with the same log, head and members.
fn partitioned() -> (Log, Vec<Entry>, State) {
    let (p, log) = group();
    let (e, f, g) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let mut side_a = log.clone();
    let mut side_b = log.clone();
    let ea = vec![
        admit(&mut side_a, &p.a, Op::Remove(p.c.peer_id())),
        admit(&mut side_a, &p.a, Op::Add(e.peer_id())),
    ];
    let eb = vec![
        admit(&mut side_b, &p.b, Op::Remove(p.d.peer_id())),
        admit(&mut side_b, &p.b, Op::Add(f.peer_id())),
        admit(&mut side_b, &p.b, Op::Admin(f.peer_id())),
        admit(&mut side_b, &f, Op::Add(g.peer_id())),
    ];
    // Reconnected: each side takes the other's entries.
    admit_all(&mut side_a, eb.clone());
    admit_all(&mut side_b, ea.clone());
    assert_eq!(side_a.head(), side_b.head());
    let state = side_a.state();
    assert_eq!(state, side_b.state());
    let expect: std::collections::BTreeSet<_> = [&p.a, &p.b, &e, &f, &g]
        .iter()
        .map(|i| i.peer_id())
        .collect();
    assert_eq!(state.members, expect, "both partitions' changes hold");
    (log, [ea, eb].concat(), state)
}

#[test]
fn partitioned_admins_converge() {
    partitioned();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn any_arrival_order_gives_the_same_log(seed in any::<u64>()) {
        use rand::{SeedableRng, seq::SliceRandom};
        static CASE: std::sync::LazyLock<(Log, Vec<Entry>, State)> =
            std::sync::LazyLock::new(partitioned);
        let (base, entries, state) = &*CASE;
        let mut shuffled = entries.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut log = base.clone();
        admit_all(&mut log, shuffled);
        prop_assert_eq!(&log.state(), state);
        let known: HashSet<Hash> = log.entries().map(|e| e.hash).collect();
        prop_assert_eq!(known.len(), base.len() + entries.len());
    }
}

#[test]
fn concurrent_changes_apply_in_hash_order() {
    // A removes B while B, concurrently, adds X: both are entry 6. Whichever hash is lower applies
    // first; if the removal comes first, B is no admin by the time of its add, which then takes
    // no effect. Either way every member computes the same.
    let (p, log) = group();
    let x = Identity::generate();
    let removal = sign(&p.a, &log, Op::Remove(p.b.peer_id()));
    let addition = sign(&p.b, &log, Op::Add(x.peer_id()));
    let mut merged = log.clone();
    admit_all(&mut merged, vec![removal.clone(), addition.clone()]);
    let s = merged.state();
    assert!(!s.members.contains(&p.b.peer_id()));
    assert_eq!(
        s.members.contains(&x.peer_id()),
        addition.hash < removal.hash,
        "the add holds only if it came first"
    );
}

fn vector_identity(first: u8) -> Identity {
    let b: Vec<u8> = (first..first + 64).collect();
    Identity::from_secrets(b[..32].try_into().unwrap(), b[32..].try_into().unwrap())
}

/// The log of the vector: A (the identity of identity-v1.json) creates group 00 11 … ff named
/// "friends" and adds B (secrets 40 41 … 7f).
fn vector_log() -> (Identity, Identity, Entry, Entry) {
    let (a, b) = (vector_identity(0), vector_identity(0x40));
    let group = GroupId(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff");
    let create = Entry::sign(
        &a,
        group,
        1,
        [0; 32],
        Op::Create {
            name: "friends".into(),
        },
        1_798_761_600_000,
    );
    let add = Entry::sign(
        &a,
        group,
        2,
        create.hash,
        Op::Add(b.peer_id()),
        1_798_761_600_001,
    );
    (a, b, create, add)
}

#[test]
fn entries_match_the_vector() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/vectors/groups-v1.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (_, b, create, add) = vector_log();
    assert_eq!(hex::encode(create.as_bytes()), v["create"]["bytes"]);
    assert_eq!(hex::encode(create.hash), v["create"]["hash"]);
    assert_eq!(hex::encode(add.as_bytes()), v["add"]["bytes"]);
    assert_eq!(hex::encode(add.hash), v["add"]["hash"]);
    assert_eq!(b.peer_id().to_string(), v["b_peer_id"]);
    let mut log = Log::new(create.group);
    for bytes in [&v["create"]["bytes"], &v["add"]["bytes"]] {
        let e = Entry::verify(&hex::decode(bytes.as_str().unwrap()).unwrap()).unwrap();
        log.admit(e).unwrap();
    }
    assert_eq!(hex::encode(log.head().digest), v["head_digest"]);
    assert_eq!(log.state().members.len(), 2);
}

/// Prints the vector (run with `--ignored --nocapture` after a format change, and say why in the
/// spec).
#[test]
#[ignore]
fn print_the_vector() {
    let (a, b, create, add) = vector_log();
    let mut log = Log::new(create.group);
    log.admit(create.clone()).unwrap();
    log.admit(add.clone()).unwrap();
    let v = serde_json::json!({
        "description": "protocols/groups-v1.md §7: A creates group 00112233445566778899aabbccddeeff named \"friends\" (entry 1) and adds B (entry 2). Identities from secrets 00 01 … 3f (A) and 40 41 … 7f (B): Ed25519 secret ‖ ML-DSA-65 seed, 32 bytes each.",
        "a_peer_id": a.peer_id().to_string(),
        "a_peer_id_bytes": hex::encode(a.peer_id().to_bytes()),
        "b_peer_id": b.peer_id().to_string(),
        "b_peer_id_bytes": hex::encode(b.peer_id().to_bytes()),
        "group": create.group.to_string(),
        "create": {"bytes": hex::encode(create.as_bytes()), "hash": hex::encode(create.hash), "seq": 1, "created_at_ms": create.created_at_ms},
        "add": {"bytes": hex::encode(add.as_bytes()), "hash": hex::encode(add.hash), "seq": 2, "created_at_ms": add.created_at_ms},
        "head_digest": hex::encode(log.head().digest),
    });
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
}
