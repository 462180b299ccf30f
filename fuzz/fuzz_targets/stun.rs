//! The ICE-lite STUN responder (`protocols/assist.md` §5) on arbitrary datagrams: never a panic,
//! and an unauthenticated Binding request never gets more than it needs back (XOR-MAPPED-ADDRESS,
//! and FINGERPRINT when it carried one).
#![no_main]

use std::{net::SocketAddr, sync::LazyLock, time::Duration};

use commucat::assist::{ice::Credentials, stun};
use libfuzzer_sys::fuzz_target;

/// Credentials with one issued ufrag, as on a node that answered an assist request.
static CREDS: LazyLock<Credentials> = LazyLock::new(|| {
    let c = Credentials::new(Duration::from_secs(3600), 16);
    let _ = c.issue();
    c
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let from: SocketAddr = if selector & 1 == 0 {
        "203.0.113.7:50000".parse().unwrap()
    } else {
        "[2001:db8::7]:4444".parse().unwrap()
    };
    let (outcome, response) = stun::answer(packet, from, &CREDS);
    if let (stun::Outcome::Ok, Some(r)) = (outcome, &response) {
        assert!(
            r.len() <= 20 + 24 + 8,
            "{} bytes for an unauthenticated request",
            r.len()
        );
    }
});
