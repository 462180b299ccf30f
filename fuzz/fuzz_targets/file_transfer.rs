//! The receiving side of a file transfer (`protocols/data-v1.md` §6) fed a sequence of inner
//! frames from a sender: FILE_META (names, sizes, layouts), FILE_CHUNK (blocks, packets), in any
//! order and number. Every name lands inside the downloads directory, nothing panics.
//!
//! Input: records `len:u16 inner_frame:[len]`, each an inner frame as SEALED carries it.
#![no_main]

use std::collections::HashMap;

use commucat::{
    data::{Inner, transfer},
    store::Store,
};
use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;

/// Files are at most this big here (the layout checks are the same at any limit).
const MAX_FILE_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let store = Store::temporary().unwrap();
    let transfers = store.transfers().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let from = PeerId::from_bytes(&[0, 4, 1, 2, 3, 4]).unwrap_or_else(|_| PeerId::random());
    let mut open: HashMap<[u8; 16], transfer::Receiving> = HashMap::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (frame, tail) = rest[2..].split_at(len);
        rest = tail;
        match Inner::decode(frame) {
            Ok(Inner::FileMeta(meta)) => {
                // The name is sanitised whatever else happens.
                let name = transfer::sanitize_name(&meta.name, "id");
                assert!(!name.is_empty() && !name.contains('/') && name != "..");
                if let Ok(r) =
                    transfer::Receiving::begin(&transfers, &downloads, from, &meta, MAX_FILE_BYTES)
                {
                    open.insert(meta.transfer_id, r);
                }
            }
            Ok(Inner::FileChunk(chunk)) => {
                let Some(r) = open.get_mut(&chunk.transfer_id) else {
                    continue;
                };
                if let Ok(true) = r.chunk(&transfers, chunk.block, &chunk.packets)
                    && r.all_blocks_done()
                    && let Ok(path) = r.finish(&transfers)
                {
                    assert!(path.starts_with(&downloads), "{path:?}");
                }
            }
            _ => {}
        }
    }
    // Nothing was written outside the downloads directory.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        assert_eq!(entry.unwrap().file_name(), "downloads");
    }
});
