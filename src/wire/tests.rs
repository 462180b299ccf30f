//! Codec tests: the spec's vectors (`protocols/vectors/data-v1-frames.json`) byte for byte, and
//! property tests (round trips; arbitrary bytes never panic the decoder).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde::Deserialize;
use tokio_util::codec::Decoder;

use super::*;

#[derive(Deserialize)]
struct Vectors {
    outer: Vec<Vector>,
    inner: Vec<Vector>,
    invalid_outer: Vec<Invalid>,
    invalid_inner: Vec<Invalid>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    hex: String,
}

#[derive(Deserialize)]
struct Invalid {
    name: String,
    hex: String,
    error: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("../../protocols/vectors/data-v1-frames.json")).unwrap()
}

fn id16() -> [u8; 16] {
    core::array::from_fn(|i| i as u8)
}

fn expected_outer(name: &str) -> Frame {
    match name {
        "hello_need_bundle" => Frame::Hello {
            version: 1,
            need_bundle: true,
            bundle_follows: false,
        },
        "hello" => Frame::Hello {
            version: 1,
            need_bundle: false,
            bundle_follows: false,
        },
        "hello_v2_first_contact" => Frame::Hello {
            version: 2,
            need_bundle: true,
            bundle_follows: true,
        },
        "hello_v2" => Frame::Hello {
            version: 2,
            need_bundle: false,
            bundle_follows: false,
        },
        "bundle_request" => Frame::BundleRequest,
        "error_frame_too_large" => Frame::Error {
            code: ErrorCode::FRAME_TOO_LARGE,
            message: "frame too large".into(),
        },
        "handshake_step2_xk" => Frame::Handshake {
            step: 2,
            pattern: 1,
            bundle_id: None,
            noise: Bytes::from(vec![0xaa; 48]),
        },
        "handshake_step1_ik" => Frame::Handshake {
            step: 1,
            pattern: 2,
            bundle_id: Some(id16()),
            noise: Bytes::from_static(&[1, 2]),
        },
        "sealed" => Frame::Sealed {
            length: 25,
            counter: 5,
            body: BytesMut::from(&[0xbb; 16][..]),
        },
        other => panic!("no expectation for vector {other}"),
    }
}

fn expected_inner(name: &str) -> Inner {
    match name {
        "data" => Inner::Data(Data {
            epoch: 1,
            seq: 2,
            msg_id: id16(),
            sent_at_ms: 0x0102_0304_0506_0708,
            via: Via::default(),
            group: None,
            body: "hi".into(),
        }),
        "data_via" => Inner::Data(Data {
            epoch: 1,
            seq: 2,
            msg_id: id16(),
            sent_at_ms: 0x0102_0304_0506_0708,
            via: Via {
                from_client: None,
                to_client: Some(ClientId([0xc1; 8])),
            },
            group: None,
            body: "hi".into(),
        }),
        "data_group" => Inner::Data(Data {
            epoch: 1,
            seq: 2,
            msg_id: id16(),
            sent_at_ms: 0x0102_0304_0506_0708,
            via: Via::default(),
            group: Some(GroupTag {
                group: *b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff",
                kind: group_kind::MESSAGE,
                sender_seq: 3,
                head_seq: 4,
                head_digest: [0xaa; 32],
            }),
            body: "hi".into(),
        }),
        "resync" => Inner::Resync {
            epoch: 0x11,
            next_seq: 11,
        },
        "ack" => Inner::Ack {
            epoch: 0x11,
            seq: 0x22,
        },
        "ping" => Inner::Ping(7),
        "pong" => Inner::Pong(7),
        "close" => Inner::Close(0),
        "finished" => Inner::Finished,
        "key_update" => Inner::KeyUpdate {
            ek: (0..1184).map(|i| i as u8).collect::<Vec<u8>>().into(),
        },
        "key_reply" => Inner::KeyReply {
            ct: (0..1088u32)
                .map(|i| (255 - i % 256) as u8)
                .collect::<Vec<u8>>()
                .into(),
        },
        "key_done" => Inner::KeyDone,
        "file_status" => Inner::FileStatus(FileStatus {
            transfer_id: [0xff; 16],
            state: file_state::RECEIVING,
            error: 0,
            blocks: 10,
            bitmap: Bytes::from_static(&[0x05, 0x02]),
        }),
        "file_meta" => Inner::FileMeta(FileMeta {
            transfer_id: [1; 16],
            size: 1000,
            hash_alg: 1,
            hash: [2; 32],
            block_size: 65536,
            symbol_size: 1024,
            repair_per_mille: 0,
            name: "a.txt".into(),
        }),
        "file_chunk" => Inner::FileChunk(FileChunk {
            transfer_id: [3; 16],
            block: 2,
            packets: Bytes::from_static(&[0, 1, 2]),
        }),
        "presence" => Inner::Presence {
            status: 1,
            since: 1_700_000_000,
        },
        "error" => Inner::Error {
            code: ErrorCode::DECRYPT_FAILED,
            message: String::new(),
        },
        other => panic!("no expectation for vector {other}"),
    }
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = FrameCodec.decode(&mut buf)? {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(out)
}

#[test]
fn outer_vectors_decode_and_reencode_byte_for_byte() {
    for v in vectors().outer {
        let bytes = hex::decode(&v.hex).unwrap();
        let frames = decode_all(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(frames, vec![expected_outer(&v.name)], "{}", v.name);
        let mut out = Vec::new();
        frames[0].encode(&mut out);
        assert_eq!(hex::encode(out), v.hex, "{} re-encodes", v.name);
    }
}

#[test]
fn inner_vectors_decode_and_reencode_byte_for_byte() {
    for v in vectors().inner {
        let bytes = hex::decode(&v.hex).unwrap();
        let inner = Inner::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(inner, expected_inner(&v.name), "{}", v.name);
        let mut out = Vec::new();
        inner.encode(&mut out);
        assert_eq!(hex::encode(out), v.hex, "{} re-encodes", v.name);
    }
}

#[test]
fn invalid_vectors_fail_with_the_spec_code() {
    let v = vectors();
    for x in v.invalid_outer {
        let err = decode_all(&hex::decode(&x.hex).unwrap()).expect_err(&x.name);
        assert_eq!(err.code().unwrap().name(), x.error, "{}: {err}", x.name);
    }
    for x in v.invalid_inner {
        let err = Inner::decode(&hex::decode(&x.hex).unwrap()).expect_err(&x.name);
        assert_eq!(err.code().unwrap().name(), x.error, "{}: {err}", x.name);
    }
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut full = Vec::new();
    expected_outer("error_frame_too_large").encode(&mut full);
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert!(
            FrameCodec.decode(&mut buf).unwrap().is_none(),
            "cut at {cut}"
        );
    }
    // An oversized length is refused from the header alone, without growing the buffer.
    let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        FrameCodec.decode(&mut buf),
        Err(DecodeError::TooLarge(_))
    ));
    assert!(
        buf.capacity() < 1024,
        "nothing was allocated for the claimed length"
    );
}

#[test]
fn long_texts_are_cut_on_a_char_boundary() {
    let message = "é".repeat(300); // 600 bytes
    let mut out = Vec::new();
    Frame::Error {
        code: ErrorCode::INTERNAL,
        message,
    }
    .encode(&mut out);
    match &decode_all(&out).unwrap()[0] {
        Frame::Error { message, .. } => {
            assert_eq!(message.len(), 256);
            assert!(message.chars().all(|c| c == 'é'));
        }
        f => panic!("{f:?}"),
    }
}

fn arb_inner() -> impl Strategy<Value = Inner> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<Option<[u8; 8]>>(),
            any::<Option<[u8; 8]>>(),
            ".{0,200}"
        )
            .prop_map(
                |(epoch, seq, msg_id, sent_at_ms, from_client, to_client, body)| {
                    Inner::Data(Data {
                        epoch,
                        seq,
                        msg_id,
                        sent_at_ms,
                        via: Via {
                            from_client: from_client.map(ClientId),
                            to_client: to_client.map(ClientId),
                        },
                        group: None,
                        body,
                    })
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Inner::Ack { epoch, seq }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(epoch, next_seq)| Inner::Resync { epoch, next_seq }),
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(transfer_id, block, p)| Inner::FileChunk(FileChunk {
                transfer_id,
                block,
                packets: p.into()
            })),
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            "[a-z.]{0,40}"
        )
            .prop_map(
                |(transfer_id, size, hash, block_size, symbol_size, repair_per_mille, name)| {
                    Inner::FileMeta(FileMeta {
                        transfer_id,
                        size,
                        hash_alg: 1,
                        hash,
                        block_size,
                        symbol_size,
                        repair_per_mille,
                        name,
                    })
                }
            ),
        (
            any::<[u8; 16]>(),
            0u8..3,
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(transfer_id, state, error, bitmap)| Inner::FileStatus(
                FileStatus {
                    transfer_id,
                    state,
                    error,
                    blocks: u32::try_from(bitmap.len() * 8).unwrap(),
                    bitmap: bitmap.into()
                }
            )),
        any::<u64>().prop_map(Inner::Ping),
        any::<u64>().prop_map(Inner::Pong),
        any::<u16>().prop_map(Inner::Close),
        (any::<u16>(), ".{0,100}").prop_map(|(c, m)| Inner::Error {
            code: ErrorCode(c),
            message: m
        }),
    ]
}

proptest! {
    #[test]
    fn inner_frames_round_trip(inner in arb_inner()) {
        let mut out = Vec::new();
        inner.encode(&mut out);
        // Long error messages are cut at 256 bytes by design; all generated ones are shorter.
        prop_assert_eq!(Inner::decode(&out).unwrap(), inner);
    }

    #[test]
    fn outer_frames_round_trip(need in any::<bool>(), code in any::<u16>(), msg in ".{0,50}",
                               noise in prop::collection::vec(any::<u8>(), 0..2000), step in 1u8..4) {
        let frames = vec![
            Frame::Hello { version: 1, need_bundle: need, bundle_follows: false },
            Frame::Hello { version: 2, need_bundle: need, bundle_follows: !need },
            Frame::BundleRequest,
            Frame::Error { code: ErrorCode(code), message: msg },
            Frame::Handshake {
                step,
                pattern: 1,
                bundle_id: (step == 1).then_some([9; 16]),
                noise: noise.into(),
            },
        ];
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        prop_assert_eq!(decode_all(&out).unwrap(), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        // Whatever comes in: frames, an error, or a wait for more bytes; never a panic.
        fn drain(bytes: &[u8]) {
            let mut buf = BytesMut::from(bytes);
            while let Ok(Some(_)) = FrameCodec.decode(&mut buf) {}
        }
        drain(&bytes);
        let _ = Inner::decode(&bytes);
        // A valid length prefix in front of random contents as well.
        let mut framed = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        drain(&framed);
    }
}
