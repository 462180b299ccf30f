//! `/commucat/data/1.0.0` framing (`protocols/data-v1.md` §1–§2): the outer frames a stream
//! carries, decoded the way a session reads them, and the inner frames SEALED encrypts. Whatever
//! decodes re-encodes to the same bytes and decodes again to the same frame.
#![no_main]

use bytes::BytesMut;
use commucat::wire::{Frame, FrameCodec, Inner};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut codec = FrameCodec;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Frame::Sealed { .. } = frame {
            continue; // its body is ciphertext; the inner side is fuzzed below
        }
        let mut out = Vec::new();
        frame.encode(&mut out);
        let again = FrameCodec
            .decode(&mut BytesMut::from(&out[..]))
            .expect("a frame we encoded decodes")
            .expect("whole");
        assert_eq!(again, frame);
    }
    if let Ok(inner) = Inner::decode(data) {
        let mut out = Vec::new();
        inner.encode(&mut out);
        assert_eq!(Inner::decode(&out).expect("re-encoded inner frame"), inner);
    }
});
