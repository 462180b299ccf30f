//! The responder's handshake state machines (`protocols/data-v1.md` §3, `data-v2.md` §3: the
//! HELLO picks the version) fed an arbitrary byte stream from the initiator: it must end with a
//! session or an error, never a panic or a hang (the stream ends after the input). What the
//! responder writes back is drained and ignored.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, LazyLock};

use commucat::{crypto::LocalKeys, data::session};
use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;

static KEYS: LazyLock<Arc<LocalKeys>> = LazyLock::new(|| Arc::new(LocalKeys::generate()));

fuzz_target!(|data: &[u8]| {
    // Fresh each time: what a context learns (bundles, peers) must not carry between inputs.
    let ctx = session::Context::new(KEYS.clone());
    common::over_stream(data, |stream| async move {
        let _ = session::respond(stream, &ctx, PeerId::random()).await;
    });
});
