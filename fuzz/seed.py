#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*) from the protocol
vectors in protocols/vectors/, the shipped config files, and RFC 5769's STUN test vectors.
Run from anywhere: python3 fuzz/seed.py. The seeds are committed; re-run after a vector changes."""

import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protocols" / "vectors"
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def frame(kind, payload):
    return struct.pack(">I", 1 + len(payload)) + bytes([kind]) + payload


frames = json.loads((VECTORS / "data-v1-frames.json").read_text())
session = json.loads((VECTORS / "data-v1-session.json").read_text())
h = bytes.fromhex

# frames: every outer and inner vector, valid or not.
for group in ("outer", "invalid_outer", "inner", "invalid_inner"):
    for v in frames[group]:
        write("frames", f"{group}-{v['name']}", h(v["hex"]))

# responder: what an initiator sends in the session vector (XK): HELLO asking for the bundle,
# then steps 1 and 3, then the first SEALED frame; and a bare HELLO.
bundle_id = h(session["responder_bundle_id"])
hello = frame(0x01, bytes([1, 1]))
step1 = frame(0x03, bytes([1, 1]) + bundle_id + h(session["msg1"]))
step3 = frame(0x03, bytes([3, 1]) + h(session["msg3"]))
sealed = h(session["first_sealed_ping"])
write("responder", "xk", hello + step1 + step3 + sealed)
write("responder", "hello", hello)
write("responder", "ik", frame(0x01, bytes([1, 0])) + frame(0x03, bytes([1, 2]) + bundle_id + h(session["msg1"])))

# initiator: mode 0 (no bundle known) and 1 (IK), with the responder's step 2.
step2 = frame(0x03, bytes([2, 1]) + h(session["msg2"]))
write("initiator", "xk-step2", bytes([0]) + step2)
write("initiator", "ik-step2", bytes([1]) + frame(0x03, bytes([2, 2]) + h(session["msg2"])))
write("initiator", "error", bytes([0]) + h(next(v["hex"] for v in frames["outer"] if v["name"] == "error_frame_too_large")))

# file_transfer: the FILE_META and FILE_CHUNK vectors as records, alone and together.
inner = {v["name"]: h(v["hex"]) for v in frames["inner"]}
rec = lambda b: struct.pack(">H", len(b)) + b
write("file_transfer", "meta", rec(inner["file_meta"]))
write("file_transfer", "meta-chunk", rec(inner["file_meta"]) + rec(inner["file_chunk"]))

# stun: RFC 5769 §2.1 sample request (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT), a plain Binding
# request, one with an unknown comprehension-required attribute. First byte: the source family.
rfc5769 = h(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20"
    "7465737420636c69656e74002400046e0001ff80290008932ff9b15126"
    "3b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb"
    "56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
plain = h("000100002112a442") + bytes(range(12))
unknown = h("000100082112a442") + bytes(range(12)) + h("7777000401020304")
for name, pkt in (("rfc5769", rfc5769), ("plain", plain), ("unknown", unknown)):
    write("stun", f"{name}-v4", bytes([0]) + pkt)
    write("stun", f"{name}-v6", bytes([1]) + pkt)

# signaling: a session of each kind of message (signaling-v1.md), one per line, the first byte
# choosing the sender.
lines = [
    b"\x00" + json.dumps({"type": "join", "room": "lobby"}).encode(),
    b"\x02" + json.dumps({"type": "join", "room": "lobby"}).encode(),
    b"\x00" + json.dumps({"type": "offer", "to": "bbbbbbbbbbbbbbbb", "room": "lobby", "payload": {"sdp": "v=0"}}).encode(),
    b"\x02" + json.dumps({"type": "answer", "to": "aaaaaaaaaaaaaaaa", "room": "lobby", "payload": {"sdp": "v=0"}}).encode(),
    b"\x00" + json.dumps({"type": "ice-candidate", "to": "node", "payload": {"candidate": "x"}}).encode(),
    b"\x01" + json.dumps({"type": "ping", "payload": 1}).encode(),
    b"\x00" + json.dumps({"type": "leave", "room": "lobby"}).encode(),
]
write("signaling", "session", b"\n".join(lines))

# assist_request: the request of assist.md §4.1 and small variations.
write("assist_request", "full", json.dumps({
    "peer_hint": "x", "prefer_reality": False, "min_paths": 2,
    "paths": [{"address": "203.0.113.7", "port": 4001, "id": "primary", "priority": 0,
               "server_name": "a.example", "reality_fingerprint": "abcd"}],
    "fec": {"mtu": 1152, "repair_overhead": 0.35}}).encode())
write("assist_request", "empty", b"{}")

# presence_record: key_len key value, from dht-records-v1.json.
rec_v = json.loads((VECTORS / "dht-records-v1.json").read_text())
key = h(rec_v["key"])
write("presence_record", "valid", bytes([len(key)]) + key + h(rec_v["value"]))

# config: the shipped files.
for f in sorted((ROOT / "config").glob("*.toml")):
    write("config", f.stem, f.read_bytes())
write("config", "bootstrap-peers", (ROOT / "bootstrap" / "peers.toml").read_bytes())
