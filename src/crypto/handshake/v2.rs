//! Version 2 of the hybrid handshake (`protocols/data-v2.md` §3): Noise IK or XX with three
//! ML-KEM-768 secrets instead of transcript signatures: one encapsulated by the initiator to the
//! responder's bundle (authenticates the responder), one by the responder to the initiator's bundle
//! (authenticates the initiator), one by the responder to a key pair the initiator made for this
//! session alone (forward secrecy against a quantum adversary that later steals both bundles).
//! Both bundles are signed once by their owners' identities and verified once by the peer; the
//! PeerIds of both sides are in the Noise prologue. Also the key update of long sessions (§5).

use std::sync::Arc;

use hkdf::SimpleHkdf;
use libp2p::PeerId;
use sha3::Sha3_512;
use snow::HandshakeState;

use super::{
    Error, MAX_NOISE_MESSAGE, Pattern, SessionKeys, kem_confirm, keyed_builder, noise, read, write,
};
use crate::crypto::bundle::{self, Bundle, BundleId, EphemeralKem, KEM_CT_LEN, KEM_EK_LEN};

/// Start of the Noise prologue of version 2 sessions (the PeerIds follow).
pub const PROLOGUE_LABEL: &[u8] = b"commucat/2";
/// HKDF `info` of the session keys.
pub const SESSION_INFO: &[u8] = b"commucat.hybrid.session.v2";
/// HKDF `info` of the keys after a key update.
pub const REKEY_INFO: &[u8] = b"commucat.rekey.v2";
/// Payload of Noise message 1 in IK: the ciphertext to the responder's bundle, its confirmation
/// hash, the initiator's ephemeral ML-KEM-768 encapsulation key and the id of the initiator's
/// bundle. In XX the first two come in message 3 instead.
pub const STEP1_PAYLOAD_LEN: usize = KEM_CT_LEN + 32 + KEM_EK_LEN + 16;
/// Payload of Noise message 2: the ciphertexts to the ephemeral key and to the initiator's bundle.
pub const STEP2_PAYLOAD_LEN: usize = 2 * KEM_CT_LEN;

const _: () = assert!(STEP1_PAYLOAD_LEN + 64 < MAX_NOISE_MESSAGE);

/// `"commucat/2" ‖ len(I) ‖ I ‖ len(R) ‖ R` with the binary PeerIds.
pub fn prologue(initiator: &PeerId, responder: &PeerId) -> Vec<u8> {
    let (i, r) = (initiator.to_bytes(), responder.to_bytes());
    let mut p = PROLOGUE_LABEL.to_vec();
    for id in [i, r] {
        p.push(u8::try_from(id.len()).expect("peer ids are short"));
        p.extend_from_slice(&id);
    }
    p
}

/// Fixed randomness of the initiator (test vectors only).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct InitiatorFixed {
    pub ephemeral: [u8; 32],
    pub kem_m: [u8; 32],
    pub ephemeral_kem_seed: [u8; 64],
}

/// Fixed randomness of the responder (test vectors only).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct ResponderFixed {
    pub ephemeral: [u8; 32],
    pub kem_m_ephemeral: [u8; 32],
    pub kem_m_initiator: [u8; 32],
}

/// Three 32-byte keys from HKDF-SHA3-512: `root`, initiator → responder, responder → initiator.
fn expand(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [[u8; 32]; 3] {
    let mut okm = [0u8; 96];
    SimpleHkdf::<Sha3_512>::new(salt, ikm)
        .expand(info, &mut okm)
        .expect("96 bytes is a valid HKDF-SHA3-512 output length");
    let part = |i: usize| -> [u8; 32] { okm[i * 32..(i + 1) * 32].try_into().expect("32") };
    [part(0), part(1), part(2)]
}

/// `HKDF-SHA3-512(ikm = h ‖ ss_r ‖ ss_e ‖ ss_i, info = SESSION_INFO)`.
fn derive(hs: &HandshakeState, secrets: [&[u8; 32]; 3]) -> Result<SessionKeys, Error> {
    if !hs.is_handshake_finished() {
        return Err(Error::HandshakeFailed("handshake not finished".into()));
    }
    let h: [u8; 32] = hs
        .get_handshake_hash()
        .try_into()
        .map_err(|_| Error::HandshakeFailed("handshake hash is not 32 bytes".into()))?;
    let ikm = [&h[..], secrets[0], secrets[1], secrets[2]].concat();
    let [root, i2r, r2i] = expand(None, &ikm, SESSION_INFO);
    Ok(SessionKeys {
        root,
        initiator_to_responder: i2r,
        responder_to_initiator: r2i,
        handshake_hash: h,
    })
}

/// The keys after a key update with the fresh ML-KEM secret `ss`:
/// `HKDF-SHA3-512(salt = root, ikm = ss, info = REKEY_INFO)`; the handshake hash stays.
pub fn next_keys(keys: &SessionKeys, ss: &[u8; 32]) -> SessionKeys {
    let [root, i2r, r2i] = expand(Some(&keys.root), ss, REKEY_INFO);
    SessionKeys {
        root,
        initiator_to_responder: i2r,
        responder_to_initiator: r2i,
        handshake_hash: keys.handshake_hash,
    }
}

/// The initiator's side.
pub struct Initiator {
    hs: HandshakeState,
    pattern: Pattern,
    local: Arc<bundle::Keys>,
    ephemeral: EphemeralKem,
    /// IK: the secret to the responder's bundle, encapsulated in message 1. XX: the ciphertext
    /// and secret for message 3, made as soon as the bundle is there ([`Self::prepare`]).
    ss_r: Option<[u8; 32]>,
    ct_r: Option<(BundleId, Vec<u8>, [u8; 32])>,
    fixed: Option<InitiatorFixed>,
    secrets: Option<[[u8; 32]; 3]>,
}

impl Initiator {
    /// IK: starts a handshake from `local` (our current bundle keys) to the owner of `remote`
    /// (verified, or being verified); returns the state and Noise message 1.
    pub fn start_ik(
        local: Arc<bundle::Keys>,
        remote: &Bundle,
        initiator: &PeerId,
        fixed: Option<InitiatorFixed>,
    ) -> Result<(Self, Vec<u8>), Error> {
        let prologue = prologue(initiator, &remote.peer_id());
        let mut builder = keyed_builder(Pattern::Ik, &local, &prologue)?
            .remote_public_key(remote.x25519_public())
            .map_err(noise)?;
        if let Some(f) = &fixed {
            builder = builder.fixed_ephemeral_key_for_testing_only(&f.ephemeral[..]);
        }
        let hs = builder.build_initiator().map_err(noise)?;
        let (ct, ss_r) = encapsulate(remote, fixed.as_ref().map(|f| &f.kem_m));
        let mut i = Self::new(hs, Pattern::Ik, local, fixed);
        i.ss_r = Some(ss_r);
        let msg1 = i.write_step1(&[&ct[..], &kem_confirm(&ct, &ss_r)].concat())?;
        Ok((i, msg1))
    }

    /// XX (first contact): starts a handshake to `responder`, whose bundle comes with its
    /// answer; returns the state and Noise message 1.
    pub fn start_xx(
        local: Arc<bundle::Keys>,
        initiator: &PeerId,
        responder: &PeerId,
        fixed: Option<InitiatorFixed>,
    ) -> Result<(Self, Vec<u8>), Error> {
        let prologue = prologue(initiator, responder);
        let mut builder = keyed_builder(Pattern::Xx, &local, &prologue)?;
        if let Some(f) = &fixed {
            builder = builder.fixed_ephemeral_key_for_testing_only(&f.ephemeral[..]);
        }
        let hs = builder.build_initiator().map_err(noise)?;
        let mut i = Self::new(hs, Pattern::Xx, local, fixed);
        let msg1 = i.write_step1(&[])?;
        Ok((i, msg1))
    }

    fn new(
        hs: HandshakeState,
        pattern: Pattern,
        local: Arc<bundle::Keys>,
        fixed: Option<InitiatorFixed>,
    ) -> Self {
        Self {
            hs,
            pattern,
            local,
            ephemeral: EphemeralKem::generate(fixed.map(|f| f.ephemeral_kem_seed)),
            ss_r: None,
            ct_r: None,
            fixed,
            secrets: None,
        }
    }

    /// Message 1: `head ‖ ephemeral ML-KEM key ‖ our bundle id`.
    fn write_step1(&mut self, head: &[u8]) -> Result<Vec<u8>, Error> {
        let payload = [head, &self.ephemeral.public(), &self.local.bundle().id()].concat();
        write(&mut self.hs, &payload)
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// XX: encapsulates to the responder's bundle `remote` (verified, or being verified) while
    /// message 2 is on its way; [`Self::read_step2`] checks it is the same bundle.
    pub fn prepare(&mut self, remote: &Bundle) {
        if self.pattern == Pattern::Xx {
            let (ct, ss) = encapsulate(remote, self.fixed.as_ref().map(|f| &f.kem_m));
            self.ct_r = Some((remote.id(), ct, ss));
        }
    }

    /// Reads Noise message 2 (decapsulating both ciphertexts). XX: `remote` is the responder's
    /// bundle (verified, or being verified), whose X25519 key must be the responder's Noise
    /// static key; returns message 3, with the secret encapsulated to that bundle.
    pub fn read_step2(
        &mut self,
        msg: &[u8],
        remote: Option<&Bundle>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let payload = read(&mut self.hs, msg)?;
        if payload.len() != STEP2_PAYLOAD_LEN {
            return Err(Error::BadKemCiphertext);
        }
        let (ct_e, ct_i) = payload.split_at(KEM_CT_LEN);
        // Implicit rejection: a wrong ciphertext gives keys the responder does not have, and the
        // first sealed frame (FINISHED) fails to open.
        let ss_e = self.ephemeral.decapsulate(ct_e)?;
        let ss_i = self.local.decapsulate(ct_i)?;
        match (self.pattern, self.ss_r) {
            (Pattern::Ik, Some(ss_r)) => {
                self.secrets = Some([ss_r, ss_e, ss_i]);
                Ok(None)
            }
            (Pattern::Xx, None) => {
                let remote = remote.ok_or_else(|| {
                    Error::HandshakeFailed("XX needs the responder's bundle".into())
                })?;
                if self.hs.get_remote_static() != Some(&remote.x25519_public()[..]) {
                    return Err(Error::HandshakeFailed(
                        "the responder's static key is not its bundle's".into(),
                    ));
                }
                let (ct, ss_r) = match self.ct_r.take() {
                    Some((id, ct, ss)) if id == remote.id() => (ct, ss),
                    _ => encapsulate(remote, self.fixed.as_ref().map(|f| &f.kem_m)),
                };
                self.secrets = Some([ss_r, ss_e, ss_i]);
                let msg3 = write(&mut self.hs, &[&ct[..], &kem_confirm(&ct, &ss_r)].concat())?;
                Ok(Some(msg3))
            }
            _ => Err(Error::HandshakeFailed("version 2 is IK or XX".into())),
        }
    }

    pub fn finish(self) -> Result<SessionKeys, Error> {
        let [a, b, c] = self
            .secrets
            .ok_or_else(|| Error::HandshakeFailed("message 2 not read".into()))?;
        derive(&self.hs, [&a, &b, &c])
    }
}

/// `(ciphertext, secret)` to `bundle`; with `m`, deterministic (test vectors).
fn encapsulate(bundle: &Bundle, m: Option<&[u8; 32]>) -> (Vec<u8>, [u8; 32]) {
    match m {
        Some(m) => bundle.encapsulate_deterministic(m),
        None => bundle.encapsulate(),
    }
}

/// Checks `ct ‖ confirm` against our bundle `local` and returns the secret.
fn decapsulate_confirmed(local: &bundle::Keys, ct_and_confirm: &[u8]) -> Result<[u8; 32], Error> {
    if ct_and_confirm.len() != KEM_CT_LEN + 32 {
        return Err(Error::BadKemCiphertext);
    }
    let (ct, confirm) = ct_and_confirm.split_at(KEM_CT_LEN);
    let ss = local.decapsulate(ct)?;
    // Constant-time compare: the hash is secret-dependent.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &kem_confirm(ct, &ss)[..],
        confirm,
    )) {
        return Err(Error::BadKemCiphertext);
    }
    Ok(ss)
}

/// The responder's side.
pub struct Responder {
    hs: HandshakeState,
    pattern: Pattern,
    local: Arc<bundle::Keys>,
    initiator_static: [u8; 32],
    /// `ss_r` (IK: from message 1; XX: from message 3), `ss_e`, `ss_i`.
    secrets: [Option<[u8; 32]>; 3],
}

/// The responder after Noise message 1: it knows which bundle the initiator uses, and needs it
/// (verified, or being verified) to answer.
pub struct Step1 {
    hs: HandshakeState,
    pattern: Pattern,
    local: Arc<bundle::Keys>,
    initiator: PeerId,
    ss_r: Option<[u8; 32]>,
    ephemeral_ek: Vec<u8>,
    initiator_bundle: BundleId,
}

impl Responder {
    /// Reads Noise message 1 from `initiator` (the libp2p connection's peer) with our bundle
    /// `local` (IK: the one the initiator named; XX: the current one), decapsulating and
    /// confirming the secret to it (IK).
    pub fn read_step1(
        local: Arc<bundle::Keys>,
        pattern: Pattern,
        msg: &[u8],
        initiator: &PeerId,
        fixed_ephemeral: Option<[u8; 32]>,
    ) -> Result<Step1, Error> {
        let prologue = prologue(initiator, &local.bundle().peer_id());
        let mut builder = keyed_builder(pattern, &local, &prologue)?;
        if let Some(e) = &fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(&e[..]);
        }
        let mut hs = builder.build_responder().map_err(noise)?;
        let payload = read(&mut hs, msg)?;
        let head = match pattern {
            Pattern::Ik => KEM_CT_LEN + 32,
            Pattern::Xx => 0,
            Pattern::Xk => return Err(Error::HandshakeFailed("version 2 is IK or XX".into())),
        };
        if payload.len() != head + KEM_EK_LEN + 16 {
            return Err(Error::BadKemCiphertext);
        }
        let (head, rest) = payload.split_at(head);
        let ss_r = match pattern {
            Pattern::Ik => Some(decapsulate_confirmed(&local, head)?),
            _ => None,
        };
        let (ephemeral_ek, id) = rest.split_at(KEM_EK_LEN);
        Ok(Step1 {
            hs,
            pattern,
            local,
            initiator: *initiator,
            ss_r,
            ephemeral_ek: ephemeral_ek.to_vec(),
            initiator_bundle: id.try_into().expect("16 bytes"),
        })
    }

    /// The initiator's Noise static key must be the one in its bundle.
    fn check_initiator_static(&self) -> Result<(), Error> {
        match self.hs.get_remote_static() {
            Some(s) if s == self.initiator_static => Ok(()),
            _ => Err(Error::HandshakeFailed(
                "the initiator's static key is not its bundle's".into(),
            )),
        }
    }

    /// Reads Noise message 3 (XX only): the secret encapsulated to our bundle.
    pub fn read_step3(&mut self, msg: &[u8]) -> Result<(), Error> {
        if self.pattern != Pattern::Xx {
            return Err(Error::HandshakeFailed("message 3 is XX only".into()));
        }
        let payload = read(&mut self.hs, msg)?;
        self.secrets[0] = Some(decapsulate_confirmed(&self.local, &payload)?);
        self.check_initiator_static()
    }

    pub fn is_finished(&self) -> bool {
        self.hs.is_handshake_finished()
    }

    pub fn finish(self) -> Result<SessionKeys, Error> {
        match self.secrets {
            [Some(a), Some(b), Some(c)] => derive(&self.hs, [&a, &b, &c]),
            _ => Err(Error::HandshakeFailed("handshake not finished".into())),
        }
    }
}

impl Step1 {
    /// The id of the bundle the initiator uses (its current one).
    pub fn initiator_bundle(&self) -> BundleId {
        self.initiator_bundle
    }

    /// Answers with Noise message 2: encapsulates to the ephemeral key and to `initiator`, the
    /// initiator's bundle (verified, or being verified, by the caller; it must be the one
    /// message 1 named).
    pub fn reply(
        self,
        initiator: &Bundle,
        fixed: Option<ResponderFixed>,
    ) -> Result<(Responder, Vec<u8>), Error> {
        if initiator.peer_id() != self.initiator || initiator.id() != self.initiator_bundle {
            return Err(Error::BadBundle("not the bundle the initiator named"));
        }
        let (ct_e, ss_e) = bundle::encapsulate_to(
            &self.ephemeral_ek,
            fixed.as_ref().map(|f| &f.kem_m_ephemeral),
        )?;
        let (ct_i, ss_i) = encapsulate(initiator, fixed.as_ref().map(|f| &f.kem_m_initiator));
        let mut r = Responder {
            hs: self.hs,
            pattern: self.pattern,
            local: self.local,
            initiator_static: *initiator.x25519_public(),
            secrets: [self.ss_r, Some(ss_e), Some(ss_i)],
        };
        if self.pattern == Pattern::Ik {
            r.check_initiator_static()?;
        }
        let msg2 = write(&mut r.hs, &[ct_e, ct_i].concat())?;
        Ok((r, msg2))
    }
}

#[cfg(test)]
mod vector;
