//! Signed DHT records as a node receives them in a PUT: presence records
//! (`protocols/dht-records-v1.md`) and name records (`protocols/names-v1.md`), a key and a value
//! judged by `dht::admit` against the clock, with nothing stored under the key and with the value
//! itself stored there.
#![no_main]

use commucat::dht;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // key_len:u8 key value
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(key_len).min(rest.len());
    let (key, value) = rest.split_at(split);
    // Within the validity of the records in protocols/vectors/dht-records-v1.json and
    // names-v1.json, the seeds.
    let now = 1_700_000_100;
    let _ = dht::admit(key, value, None, now);
    let _ = dht::admit(key, value, Some(value), now);
});
