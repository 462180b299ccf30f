//! The initiator's handshake state machines fed an arbitrary byte stream as the responder's
//! answers: by the first input byte, version 1 (`protocols/data-v1.md` §3) or 2 (`data-v2.md`
//! §3), with no bundle known (XK or XX: the answers must bring a BUNDLE) or with the real
//! responder's bundle known (IK).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, LazyLock};

use commucat::{crypto::LocalKeys, data::session};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<Arc<LocalKeys>> = LazyLock::new(|| Arc::new(LocalKeys::generate()));
static REMOTE: LazyLock<LocalKeys> = LazyLock::new(LocalKeys::generate);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, answers)) = data.split_first() else {
        return;
    };
    let known = (mode & 1 == 1).then(|| REMOTE.bundle.current().bundle().clone());
    let version = if mode & 2 == 2 { 2 } else { 1 };
    let ctx = session::Context::new(KEYS.clone()).with_version(version);
    common::over_stream(answers, |stream| async move {
        let _ = session::initiate(stream, &ctx, REMOTE.peer_id(), known).await;
    });
});
