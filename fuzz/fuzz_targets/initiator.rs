//! The initiator's handshake state machine (`protocols/data-v1.md` §3) fed an arbitrary byte
//! stream as the responder's answers, with no bundle known (XK: the stream must start with a
//! BUNDLE) or with the real responder's bundle known (IK), by the first input byte.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use commucat::{
    crypto::LocalKeys,
    data::session::{self, HandshakeCounters},
};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<LocalKeys> = LazyLock::new(LocalKeys::generate);
static REMOTE: LazyLock<LocalKeys> = LazyLock::new(LocalKeys::generate);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, answers)) = data.split_first() else {
        return;
    };
    let known = (mode & 1 == 1).then(|| REMOTE.bundle.current().bundle().clone());
    let counters = HandshakeCounters::default();
    common::over_stream(answers, |stream| async move {
        let _ = session::initiate(stream, &KEYS, REMOTE.peer_id(), known, &counters).await;
    });
});
