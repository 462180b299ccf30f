#!/usr/bin/env python3
"""Checks the protocol vectors with implementations CommuCat did not write.

    pip install noiseprotocol kyber-py dilithium-py cryptography
    python3 protocols/vectors/crosscheck.py

data-v1-session.json: recomputes from the vector's secrets and randomness the ML-KEM-768 ciphertext and
secret (kyber-py), the key confirmation (hashlib SHA3-256), the three Noise XK messages and the
handshake hash (noiseprotocol), the session keys (HKDF-SHA3-512 from hmac + hashlib) and the first
SEALED frame (AES-256-GCM from pyca/cryptography).
identity-v1.json and dht-records-v1.json: verifies the identity binding, the record's and its bundle's
Ed25519 (pyca/cryptography) and ML-DSA-65 (dilithium-py) signatures over the messages the specs give.
contacts-v1.json: recomputes the safety number with hashlib's SHA-512.
groups-v1.json: parses two log entries, verifies their signer's binding and both entry signatures
(pyca/cryptography, dilithium-py), their SHA-256 hashes, the chain, and the log head's digest.
pairing-v1.json: decodes the code as Crockford base 32, derives the device key with HKDF-SHA3-256
(hmac + hashlib) and Ed25519 (pyca/cryptography), rebuilds the certificate's bytes and verifies
its signature with the device CA's key.
data-v2-session.json: rebuilds both key bundles' bodies (pyca/cryptography, dilithium-py, kyber-py) and
their ids, the prologue, the three Noise XX messages with their ML-KEM-768 payloads and the handshake
hash (noiseprotocol, kyber-py, hashlib), the session keys, the first SEALED frame (FINISHED) and one
key update (kyber-py, HKDF-SHA3-512 with the root as salt).
hold-v1.json: rebuilds the multistream-select messages from their rules (varint length, text, newline).
names-v1.json: normalises the typed handle with Python's unicodedata (NFKC) and str.casefold, and
verifies the name record's binding and signatures likewise.
Exits non-zero on any mismatch.
"""
import hashlib
import hmac
import json
import pathlib
import sys
import unicodedata
import warnings

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from dilithium_py.ml_dsa import ML_DSA_65
from kyber_py.ml_kem import ML_KEM_768
from noise.connection import Keypair, NoiseConnection

warnings.filterwarnings("ignore", message="One of ephemeral keypairs")
here = pathlib.Path(__file__).parent
v = json.loads((here / "data-v1-session.json").read_text())
b = bytes.fromhex
failures = []


def check(name, ok):
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name)


def hkdf_sha3_512(ikm, info, length, salt=bytes(64)):
    prk = hmac.new(salt, ikm, hashlib.sha3_512).digest()  # salt = none: HashLen zeros
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha3_512).digest()
        out, i = out + t, i + 1
    return out[:length]


ek, dk = ML_KEM_768.key_derive(b(v["responder_ml_kem_seed"]))
ss, ct = ML_KEM_768._encaps_internal(ek, b(v["kem_m"]))  # FIPS 203 ML-KEM.Encaps_internal
check("ML-KEM-768 ciphertext", ct.hex() == v["kem_ciphertext"])
check("ML-KEM-768 shared secret", ss.hex() == v["kem_shared_secret"] and ML_KEM_768.decaps(dk, ct) == ss)
confirm = hashlib.sha3_256(b"commucat.kem.confirm.v1" + ct + ss).digest()
check("key confirmation", confirm.hex() == v["kem_confirm"])


def noise(initiator, static, ephemeral, remote_static=None, pattern=b"XK", prologue=b"commucat"):
    n = NoiseConnection.from_name(b"Noise_" + pattern + b"_25519_ChaChaPoly_BLAKE2s")
    n.set_as_initiator() if initiator else n.set_as_responder()
    n.set_prologue(prologue)
    n.set_keypair_from_private_bytes(Keypair.STATIC, static)
    n.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote_static:
        n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    n.start_handshake()
    return n


r_static = X25519PrivateKey.from_private_bytes(b(v["responder_x25519_secret"])).public_key()
r_public = r_static.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
i = noise(True, b(v["initiator_x25519_secret"]), b(v["initiator_ephemeral"]), r_public)
r = noise(False, b(v["responder_x25519_secret"]), b(v["responder_ephemeral"]))
m1 = i.write_message(ct + confirm)
check("Noise message 1", m1.hex() == v["msg1"] and r.read_message(m1) == ct + confirm)
m2 = r.write_message(b"")
check("Noise message 2", m2.hex() == v["msg2"])
i.read_message(m2)
m3 = i.write_message(b"")
check("Noise message 3", m3.hex() == v["msg3"])
r.read_message(m3)
h = i.get_handshake_hash()
check("handshake hash", h.hex() == v["handshake_hash"] == r.get_handshake_hash().hex())

okm = hkdf_sha3_512(h + ss, b"commucat.hybrid.session.v1", 96)
check("session keys", [okm[:32].hex(), okm[32:64].hex(), okm[64:].hex()]
      == [v["root"], v["initiator_to_responder"], v["responder_to_initiator"]])

inner = bytes([0x27]) + (1).to_bytes(8, "big")  # PING nonce 1
header = (1 + 8 + len(inner) + 16).to_bytes(4, "big") + b"\x10" + (0).to_bytes(8, "big")
sealed = AESGCM(okm[32:64]).encrypt(bytes(4) + (0).to_bytes(8, "big"), inner, header)
check("first SEALED frame", (header + sealed).hex() == v["first_sealed_ping"])

# data-v2: a first-contact (XX) handshake and a key update.
v2 = json.loads((here / "data-v2-session.json").read_text())
raw = serialization.Encoding.Raw


def bundle_body(ed_secret, ml_seed, x_secret, kem_seed, created):
    ed = Ed25519PrivateKey.from_private_bytes(ed_secret)
    peer = bytes.fromhex("002408011220") + ed.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    pk, sk = ML_DSA_65.key_derive(ml_seed)
    bind_ed = ed.sign(b"commucat/identity/v1/ml-dsa-65-key" + pk)
    bind_ml = ML_DSA_65.sign(sk, peer, ctx=b"commucat/identity/v1/peer-id", deterministic=True)
    x_pub = X25519PrivateKey.from_private_bytes(x_secret).public_key().public_bytes(
        raw, serialization.PublicFormat.Raw)
    ek, dk = ML_KEM_768.key_derive(kem_seed)
    body = bytes([1]) + created.to_bytes(8, "big") + x_pub + ek + pk + bind_ed + bind_ml
    return peer, body, ek, dk, x_pub


ip, ibody, i_ek, i_dk, _ = bundle_body(b(v2["initiator_ed25519_secret"]), b(v2["initiator_ml_dsa_seed"]),
                                       b(v2["initiator_x25519_secret"]), b(v2["initiator_ml_kem_seed"]),
                                       v2["bundle_created_at"])
rp, rbody, r_ek, r_dk, r_x = bundle_body(b(v2["responder_ed25519_secret"]), b(v2["responder_ml_dsa_seed"]),
                                         b(v2["responder_x25519_secret"]), b(v2["responder_ml_kem_seed"]),
                                         v2["bundle_created_at"])
check("v2: peer ids", ip.hex() == v2["initiator_peer_id"] and rp.hex() == v2["responder_peer_id"])
i_id, r_id = hashlib.sha256(ibody).digest()[:16], hashlib.sha256(rbody).digest()[:16]
check("v2: bundle ids", i_id.hex() == v2["initiator_bundle_id"] and r_id.hex() == v2["responder_bundle_id"])
prologue = b"commucat/2" + bytes([len(ip)]) + ip + bytes([len(rp)]) + rp
check("v2: prologue", prologue.hex() == v2["prologue"])
e_ek, e_dk = ML_KEM_768.key_derive(b(v2["initiator_ephemeral_ml_kem_seed"]))
i2 = noise(True, b(v2["initiator_x25519_secret"]), b(v2["initiator_ephemeral"]), pattern=b"XX", prologue=prologue)
r2 = noise(False, b(v2["responder_x25519_secret"]), b(v2["responder_ephemeral"]), pattern=b"XX", prologue=prologue)
m1 = i2.write_message(e_ek + i_id)
check("v2: Noise message 1 (ephemeral ML-KEM key, initiator bundle id)",
      m1.hex() == v2["msg1"] and r2.read_message(m1) == e_ek + i_id)
ss_e, ct_e = ML_KEM_768._encaps_internal(e_ek, b(v2["kem_m_ephemeral"]))
ss_i, ct_i = ML_KEM_768._encaps_internal(i_ek, b(v2["kem_m_initiator"]))
m2 = r2.write_message(ct_e + ct_i)
check("v2: Noise message 2 (ciphertexts to the ephemeral key and the initiator's bundle)",
      m2.hex() == v2["msg2"] and i2.read_message(m2) == ct_e + ct_i)
check("v2: responder's static key is its bundle's", i2.noise_protocol.handshake_state.rs.public_bytes == r_x)
ss_r, ct_r = ML_KEM_768._encaps_internal(r_ek, b(v2["kem_m_responder"]))
confirm2 = hashlib.sha3_256(b"commucat.kem.confirm.v1" + ct_r + ss_r).digest()
m3 = i2.write_message(ct_r + confirm2)
check("v2: Noise message 3 (ciphertext to the responder's bundle, confirmation)",
      m3.hex() == v2["msg3"] and r2.read_message(m3) == ct_r + confirm2)
check("v2: ML-KEM-768 secrets, decapsulated too",
      [ss_r.hex(), ss_e.hex(), ss_i.hex()] == [v2["ss_responder"], v2["ss_ephemeral"], v2["ss_initiator"]]
      and ML_KEM_768.decaps(r_dk, ct_r) == ss_r and ML_KEM_768.decaps(e_dk, ct_e) == ss_e
      and ML_KEM_768.decaps(i_dk, ct_i) == ss_i)
h2 = i2.get_handshake_hash()
check("v2: handshake hash", h2.hex() == v2["handshake_hash"] == r2.get_handshake_hash().hex())
okm2 = hkdf_sha3_512(h2 + ss_r + ss_e + ss_i, b"commucat.hybrid.session.v2", 96)
check("v2: session keys", [okm2[:32].hex(), okm2[32:64].hex(), okm2[64:].hex()]
      == [v2["root"], v2["initiator_to_responder"], v2["responder_to_initiator"]])
fin = bytes([0x2d])
header = (1 + 8 + len(fin) + 16).to_bytes(4, "big") + b"\x10" + (0).to_bytes(8, "big")
sealed = AESGCM(okm2[32:64]).encrypt(bytes(4) + (0).to_bytes(8, "big"), fin, header)
check("v2: first SEALED frame (FINISHED)", (header + sealed).hex() == v2["first_sealed_finished"])
u_ek, u_dk = ML_KEM_768.key_derive(b(v2["key_update_ml_kem_seed"]))
ss_u, ct_u = ML_KEM_768._encaps_internal(u_ek, b(v2["key_update_m"]))
check("v2: key update key, ciphertext and secret",
      u_ek.hex() == v2["key_update_ek"] and ct_u.hex() == v2["key_reply_ct"]
      and ss_u.hex() == v2["key_update_secret"] and ML_KEM_768.decaps(u_dk, ct_u) == ss_u)
nxt = hkdf_sha3_512(ss_u, b"commucat.rekey.v2", 96, salt=okm2[:32])
check("v2: keys after the update", [nxt[:32].hex(), nxt[32:64].hex(), nxt[64:].hex()]
      == [v2["next_root"], v2["next_initiator_to_responder"], v2["next_responder_to_initiator"]])

# identity-v1: the binding, recomputed (both signatures are deterministic).
ident = json.loads((here / "identity-v1.json").read_text())
ed_key = Ed25519PrivateKey.from_private_bytes(b(ident["ed25519_secret"]))
ml_pk, ml_sk = ML_DSA_65.key_derive(b(ident["ml_dsa_65_seed"]))
check("identity: ML-DSA-65 public key", ml_pk.hex() == ident["ml_dsa_public"])
check("identity: Ed25519 binding signature",
      ed_key.sign(b"commucat/identity/v1/ml-dsa-65-key" + ml_pk).hex() == ident["ed25519_signature"])
check("identity: ML-DSA-65 binding signature",
      ML_DSA_65.sign(ml_sk, b(ident["peer_id_bytes"]), ctx=b"commucat/identity/v1/peer-id", deterministic=True).hex()
      == ident["ml_dsa_signature"])

# dht-records-v1: a presence record and the bundle inside it.
rec = json.loads((here / "dht-records-v1.json").read_text())
key, value = b(rec["key"]), b(rec["value"])
peer = key[len(b"/commucat/presence/"):]
ed_pub = Ed25519PublicKey.from_public_bytes(peer[6:])  # identity multihash: 00 24 08 01 12 20 ‖ key
body, ed_sig, ml_sig = value[:-3373], value[-3373:-3309], value[-3309:]
bundle = body[-9923:]
bundle_body, bundle_ed, bundle_ml = bundle[:6550], bundle[6550:6614], bundle[6614:]
bundle_ml_pk = bundle_body[1 + 8 + 32 + 1184:1 + 8 + 32 + 1184 + 1952]


def ed_ok(sig, msg):
    try:
        ed_pub.verify(sig, msg)
        return True
    except Exception:
        return False


check("record: Ed25519 signature", ed_ok(ed_sig, b"commucat/presence/v1" + key + body))
check("record: ML-DSA-65 signature", ML_DSA_65.verify(bundle_ml_pk, key + body, ml_sig, ctx=b"commucat/presence/v1"))
check("bundle: Ed25519 signature", ed_ok(bundle_ed, b"commucat/bundle/v1" + peer + bundle_body))
check("bundle: ML-DSA-65 signature", ML_DSA_65.verify(bundle_ml_pk, peer + bundle_body, bundle_ml, ctx=b"commucat/bundle/v1"))

# names-v1: a name record (handle, PeerId, identity binding) and its signatures.
name = json.loads((here / "names-v1.json").read_text())
typed = name["handle_typed"]
check("name: handle normalised (NFKC, case folding, NFKC)",
      unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", typed).casefold()) == name["handle"])
key, value = b(name["key"]), b(name["value"])
check("name: key is the prefix and the skeleton", key == b"/commucat/name/" + name["skeleton"].encode())
body, ed_sig, ml_sig = value[:-3373], value[-3373:-3309], value[-3309:]
hlen = body[18]
handle = body[19:19 + hlen]
plen = body[19 + hlen]
peer = body[20 + hlen:20 + hlen + plen]
rest = body[20 + hlen + plen:]
ml_pk, bind_ed, bind_ml = rest[:1952], rest[1952:2016], rest[2016:]
check("name: layout", body[0] == 1 and body[1] == 0 and len(bind_ml) == 3309 and handle == name["handle"].encode())
check("name: seq and expiry", int.from_bytes(body[2:10], "big") == name["seq"]
      and int.from_bytes(body[10:18], "big") == name["expires_at"])
ed_pub = Ed25519PublicKey.from_public_bytes(peer[6:])
check("name: binding Ed25519 signature", ed_ok(bind_ed, b"commucat/identity/v1/ml-dsa-65-key" + ml_pk))
check("name: binding ML-DSA-65 signature",
      ML_DSA_65.verify(ml_pk, peer, bind_ml, ctx=b"commucat/identity/v1/peer-id"))
check("name: Ed25519 signature", ed_ok(ed_sig, b"commucat/name/v1" + key + body))
check("name: ML-DSA-65 signature", ML_DSA_65.verify(ml_pk, key + body, ml_sig, ctx=b"commucat/name/v1"))

# contacts-v1: the safety number of two identities.
sn = json.loads((here / "contacts-v1.json").read_text())


def half(peer, ml_pk):
    keys = peer[6:] + ml_pk  # identity multihash: 00 24 08 01 12 20 ‖ Ed25519 key
    h = hashlib.sha512((1).to_bytes(2, "big") + keys + peer).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + keys).digest()
    return "".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100000:05}" for i in range(0, 30, 5))


halves = sorted([half(b(sn["a_peer_id_bytes"]), b(sn["a_ml_dsa_public"])),
                 half(b(sn["b_peer_id_bytes"]), b(sn["b_ml_dsa_public"]))])
digits = halves[0] + halves[1]
check("safety number", " ".join(digits[i:i + 5] for i in range(0, 60, 5)) == sn["safety_number"])
# pairing-v1: a code, a device key derived from a seed, a device certificate.
pv = json.loads((here / "pairing-v1.json").read_text())
crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def code_value(typed):
    t = typed.upper().replace("-", "").replace(" ", "").translate(str.maketrans("ILO", "110"))
    assert len(t) == 10
    n = 0
    for c in t:
        n = n * 32 + crockford.index(c)
    return n


check("pairing: code", all(code_value(t) == pv["code_value"] for t in pv["typed"] + [pv["code"]]))
device_id = b(pv["device_id"])
prk = hmac.new(bytes(32), b(pv["device_seed"]), hashlib.sha3_256).digest()  # salt = none
okm = hmac.new(prk, b"commucat device key v1" + device_id + b"\x01", hashlib.sha3_256).digest()
check("pairing: device key (HKDF-SHA3-256)", okm.hex() == pv["device_private"])
raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
device_public = Ed25519PrivateKey.from_private_bytes(okm).public_key().public_bytes(*raw)
check("pairing: device public key", device_public.hex() == pv["device_public"])
ca = Ed25519PrivateKey.from_private_bytes(b(pv["ca_secret"]))
check("pairing: device CA public key", ca.public_key().public_bytes(*raw).hex() == pv["ca_public"])
node = b(pv["node_bytes"])
signed = (b"commucat device certificate v1" + device_id + device_public + bytes([len(node)]) + node
          + pv["issued_at"].to_bytes(8, "big") + pv["expires_at"].to_bytes(8, "big"))
check("pairing: certificate bytes", signed.hex() == pv["signed_bytes"])
try:
    Ed25519PublicKey.from_public_bytes(b(pv["ca_public"])).verify(b(pv["signature"]), signed)
    check("pairing: certificate signature", True)
except Exception:
    check("pairing: certificate signature", False)
# groups-v1: a create and an add entry, chained; the head of the log they make.
gv = json.loads((here / "groups-v1.json").read_text())


def entry(raw):
    body, sigs = raw[:-3373], raw[-3373:]
    i = 0

    def take(n):
        nonlocal i
        out = body[i:i + n]
        i += n
        return out

    f = {"version": take(1)[0], "group": take(16), "seq": int.from_bytes(take(8), "big"), "prev": take(32),
         "op": take(1)[0]}
    f["subject"] = take(take(1)[0])
    f["name"] = take(take(1)[0])
    f["created_at_ms"] = int.from_bytes(take(8), "big")
    f["signer"] = take(take(1)[0])
    ml_pk, bind_ed, bind_ml = take(1952), take(64), take(3309)
    f["complete"] = i == len(body)
    pub = Ed25519PublicKey.from_public_bytes(f["signer"][6:])
    ctx = b"commucat/group-entry/v1"

    def ok(sig, msg):
        try:
            pub.verify(sig, msg)
            return True
        except Exception:
            return False

    f["binding"] = ok(bind_ed, b"commucat/identity/v1/ml-dsa-65-key" + ml_pk) and ML_DSA_65.verify(
        ml_pk, f["signer"], bind_ml, ctx=b"commucat/identity/v1/peer-id")
    f["signed"] = ok(sigs[:64], ctx + f["group"] + body) and ML_DSA_65.verify(
        ml_pk, f["group"] + body, sigs[64:], ctx=ctx)
    return f


create_raw, add_raw = b(gv["create"]["bytes"]), b(gv["add"]["bytes"])
c, a = entry(create_raw), entry(add_raw)
check("groups: create entry fields", c["complete"] and c["version"] == 1 and c["op"] == 1 and c["seq"] == 1
      and c["prev"] == bytes(32) and c["name"] == b"friends" and c["group"].hex() == gv["group"]
      and c["signer"].hex() == gv["a_peer_id_bytes"])
check("groups: add entry fields", a["complete"] and a["op"] == 2 and a["seq"] == 2
      and a["subject"].hex() == gv["b_peer_id_bytes"] and a["name"] == b"")
check("groups: signer bindings", c["binding"] and a["binding"])
check("groups: entry signatures (Ed25519, ML-DSA-65)", c["signed"] and a["signed"])
ch, ah = hashlib.sha256(create_raw).digest(), hashlib.sha256(add_raw).digest()
check("groups: entry hashes and the chain", ch.hex() == gv["create"]["hash"] and ah.hex() == gv["add"]["hash"]
      and a["prev"] == ch)
check("groups: head digest", hashlib.sha256(ch + ah).hexdigest() == gv["head_digest"])


# hold-v1.json: multistream-select 1.0.0 messages are an unsigned LEB128 length, the text and "\n".
def ms(text):
    raw, n, out = text.encode() + b"\n", len(text) + 1, b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out + raw


hv = json.loads((here / "hold-v1.json").read_text())
header = ms("/multistream/1.0.0")
check("hold: proposal and acceptance", (header + ms(hv["protocol"])).hex() == hv["dialer_proposal"]
      == hv["listener_accept"])
check("hold: refusal", (header + ms("na")).hex() == hv["listener_refuse"])
sys.exit(1 if failures else 0)
