//! WebSocket signaling messages (`protocols/signaling-v1.md`) as the hub handles them: parsing,
//! rooms, relayed offers between three sessions (one of two tokens), every queue and bound as
//! configured by default.
//!
//! Input: lines; the first byte of a line picks the session that sends the rest.
#![no_main]

use commucat::{
    assist::signaling::{self, Hub, Metrics},
    config,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hub = Hub::new(config::Signaling::default(), Metrics::default());
    let _node = hub.attach_node();
    let sessions: Vec<_> = ["aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
        .iter()
        .filter_map(|client| hub.register(client.parse().ok()?).ok())
        .collect();
    for line in data.split(|b| *b == b'\n') {
        let Some((&who, text)) = line.split_first() else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(text) else {
            continue;
        };
        let session = &sessions[usize::from(who) % sessions.len()];
        signaling::handle(&hub, session.id, text);
    }
    for s in &sessions {
        hub.unregister(s.id);
    }
});
