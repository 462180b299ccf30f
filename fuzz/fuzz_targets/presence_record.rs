//! Signed presence records (`protocols/dht-records-v1.md`) as a DHT node receives them in a PUT:
//! a key and a value, verified against each other and the clock.
#![no_main]

use commucat::dht::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // key_len:u8 key value
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(key_len).min(rest.len());
    let (key, value) = rest.split_at(split);
    // Within the validity of the record in protocols/vectors/dht-records-v1.json, the seed.
    let _ = record::verify(key, value, 1_700_000_100);
});
