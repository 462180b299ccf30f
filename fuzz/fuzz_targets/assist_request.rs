//! `POST /api/p2p/assist` bodies (`protocols/assist.md` §4.1): JSON into the request type and its
//! validation, as the server runs them before anything touches the network.
#![no_main]

use commucat::assist::p2p_assist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = p2p_assist::check_request(data, 8);
});
