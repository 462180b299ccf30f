//! The responder's handshake state machine (`protocols/data-v1.md` §3) fed an arbitrary byte
//! stream from the initiator: it must end with a session or an error, never a panic or a hang
//! (the stream ends after the input). What the responder writes back is drained and ignored.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use commucat::{
    crypto::LocalKeys,
    data::session::{self, HandshakeCounters},
};
use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;

static KEYS: LazyLock<LocalKeys> = LazyLock::new(LocalKeys::generate);

fuzz_target!(|data: &[u8]| {
    let counters = HandshakeCounters::default();
    common::over_stream(data, |stream| async move {
        let _ = session::respond(stream, &KEYS, PeerId::random(), &counters).await;
    });
});
