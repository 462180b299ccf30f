//! The hybrid handshake (`protocols/data-v1.md` §3): Noise XK or IK (`snow`) with an ML-KEM-768
//! encapsulation in message 1, session keys from HKDF-SHA3-512 over the Noise handshake hash and the
//! ML-KEM secret, and ML-DSA-65 signatures over the transcript (version 1); [`v2`] authenticates
//! with KEMs against bundles signed once instead. Pure state machines: the frames they travel in
//! are `data::session`'s business.

use hkdf::SimpleHkdf;
use libp2p::PeerId;
use ml_dsa::{MlDsa65, Signature};
use sha3::{Digest, Sha3_256, Sha3_512};
use snow::{Builder, HandshakeState};

use super::{
    Error,
    bundle::{self, Bundle},
};
use crate::identity::{Binding, Identity};

/// Noise prologue of every CommuCat session.
pub const PROLOGUE: &[u8] = b"commucat";
/// Label of the ML-KEM key confirmation hash.
pub const KEM_CONFIRM_LABEL: &[u8] = b"commucat.kem.confirm.v1";
/// HKDF `info` of the session keys.
pub const SESSION_INFO: &[u8] = b"commucat.hybrid.session.v1";
/// ML-DSA-65 context of transcript signatures.
pub const TRANSCRIPT_CONTEXT: &[u8] = b"commucat/session/v1";
/// Largest Noise handshake message.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Payload of Noise message 1: ML-KEM ciphertext and its confirmation hash.
pub const STEP1_PAYLOAD_LEN: usize = bundle::KEM_CT_LEN + 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The initiator fetched the responder's bundle in this session: 3 messages.
    Xk = 1,
    /// The initiator already held the responder's bundle: 2 messages.
    Ik = 2,
    /// Version 2 only: first contact, the bundles travel beside the handshake: 3 messages.
    Xx = 3,
}

impl Pattern {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Pattern::Xk),
            2 => Some(Pattern::Ik),
            3 => Some(Pattern::Xx),
            _ => None,
        }
    }

    /// The pattern `b` names, if protocol `version` uses it: XK and IK in version 1, IK and XX
    /// in version 2.
    pub fn of_version(b: u8, version: u8) -> Option<Self> {
        Self::from_u8(b).filter(|p| match p {
            Pattern::Xk => version == 1,
            Pattern::Ik => true,
            Pattern::Xx => version >= 2,
        })
    }

    fn noise_name(self) -> &'static str {
        match self {
            Pattern::Xk => "Noise_XK_25519_ChaChaPoly_BLAKE2s",
            Pattern::Ik => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
            Pattern::Xx => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        }
    }

    fn builder(self) -> Builder<'static> {
        Builder::new(
            self.noise_name()
                .parse()
                .expect("valid Noise parameter names"),
        )
    }
}

/// Who signs a transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator = 1,
    Responder = 2,
}

/// What a finished handshake yields.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub root: [u8; 32],
    pub initiator_to_responder: [u8; 32],
    pub responder_to_initiator: [u8; 32],
    pub handshake_hash: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn derive(hs: &HandshakeState, ss: &[u8; 32]) -> Result<SessionKeys, Error> {
    let h: [u8; 32] = hs
        .get_handshake_hash()
        .try_into()
        .map_err(|_| Error::HandshakeFailed("handshake hash is not 32 bytes".into()))?;
    let mut okm = [0u8; 96];
    SimpleHkdf::<Sha3_512>::new(None, &[&h[..], ss].concat())
        .expand(SESSION_INFO, &mut okm)
        .expect("96 bytes is a valid HKDF-SHA3-512 output length");
    let part = |i: usize| -> [u8; 32] { okm[i * 32..(i + 1) * 32].try_into().expect("32") };
    Ok(SessionKeys {
        root: part(0),
        initiator_to_responder: part(1),
        responder_to_initiator: part(2),
        handshake_hash: h,
    })
}

fn kem_confirm(ct: &[u8], ss: &[u8; 32]) -> [u8; 32] {
    Sha3_256::new()
        .chain_update(KEM_CONFIRM_LABEL)
        .chain_update(ct)
        .chain_update(ss)
        .finalize()
        .into()
}

/// A builder of `pattern` with `prologue` and our static key.
fn keyed_builder<'a>(
    pattern: Pattern,
    local: &'a bundle::Keys,
    prologue: &'a [u8],
) -> Result<Builder<'a>, Error> {
    pattern
        .builder()
        .prologue(prologue)
        .map_err(noise)?
        .local_private_key(local.x25519_secret())
        .map_err(noise)
}

fn noise(e: snow::Error) -> Error {
    Error::HandshakeFailed(e.to_string())
}

fn write(hs: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
    let n = hs.write_message(payload, &mut buf).map_err(noise)?;
    buf.truncate(n);
    Ok(buf)
}

fn read(hs: &mut HandshakeState, msg: &[u8]) -> Result<Vec<u8>, Error> {
    if msg.len() > MAX_NOISE_MESSAGE {
        return Err(Error::HandshakeFailed("Noise message too long".into()));
    }
    let mut buf = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut buf).map_err(noise)?;
    buf.truncate(n);
    Ok(buf)
}

/// Fixed randomness for reproducible test vectors: Noise ephemeral secret and ML-KEM message.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct FixedRandomness {
    pub ephemeral: [u8; 32],
    pub kem_m: [u8; 32],
}

/// The initiator's side.
pub struct Initiator {
    hs: HandshakeState,
    pattern: Pattern,
    ss: [u8; 32],
}

impl Initiator {
    /// Starts a handshake to the owner of `remote`; returns the state and Noise message 1.
    pub fn start(
        local: &bundle::Keys,
        remote: &Bundle,
        pattern: Pattern,
    ) -> Result<(Self, Vec<u8>), Error> {
        Self::start_with(local, remote, pattern, None)
    }

    #[doc(hidden)]
    pub fn start_with(
        local: &bundle::Keys,
        remote: &Bundle,
        pattern: Pattern,
        fixed: Option<FixedRandomness>,
    ) -> Result<(Self, Vec<u8>), Error> {
        let mut builder = keyed_builder(pattern, local, PROLOGUE)?
            .remote_public_key(remote.x25519_public())
            .map_err(noise)?;
        if let Some(f) = &fixed {
            builder = builder.fixed_ephemeral_key_for_testing_only(&f.ephemeral[..]);
        }
        let mut hs = builder.build_initiator().map_err(noise)?;
        let (ct, ss) = match &fixed {
            Some(f) => remote.encapsulate_deterministic(&f.kem_m),
            None => remote.encapsulate(),
        };
        let payload = [&ct[..], &kem_confirm(&ct, &ss)].concat();
        let msg1 = write(&mut hs, &payload)?;
        Ok((Self { hs, pattern, ss }, msg1))
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Reads Noise message 2; for XK returns message 3 to send.
    pub fn read_step2(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let payload = read(&mut self.hs, msg)?;
        if !payload.is_empty() {
            return Err(Error::HandshakeFailed("message 2 carries a payload".into()));
        }
        match self.pattern {
            Pattern::Ik => Ok(None),
            Pattern::Xk | Pattern::Xx => Ok(Some(write(&mut self.hs, &[])?)),
        }
    }

    pub fn finish(self) -> Result<SessionKeys, Error> {
        if !self.hs.is_handshake_finished() {
            return Err(Error::HandshakeFailed("handshake not finished".into()));
        }
        derive(&self.hs, &self.ss)
    }
}

/// The responder's side.
pub struct Responder {
    hs: HandshakeState,
    ss: [u8; 32],
}

impl Responder {
    /// Reads Noise message 1 (decapsulating and confirming the ML-KEM secret) and returns the state
    /// and Noise message 2.
    pub fn read_step1(
        local: &bundle::Keys,
        pattern: Pattern,
        msg: &[u8],
    ) -> Result<(Self, Vec<u8>), Error> {
        Self::read_step1_with(local, pattern, msg, None)
    }

    #[doc(hidden)]
    pub fn read_step1_with(
        local: &bundle::Keys,
        pattern: Pattern,
        msg: &[u8],
        fixed_ephemeral: Option<[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), Error> {
        let mut builder = keyed_builder(pattern, local, PROLOGUE)?;
        if let Some(e) = &fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(&e[..]);
        }
        let mut hs = builder.build_responder().map_err(noise)?;
        let payload = read(&mut hs, msg)?;
        if payload.len() != STEP1_PAYLOAD_LEN {
            return Err(Error::BadKemCiphertext);
        }
        let (ct, confirm) = payload.split_at(bundle::KEM_CT_LEN);
        let ss = local.decapsulate(ct)?;
        // Constant-time compare: the hash is secret-dependent.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &kem_confirm(ct, &ss)[..],
            confirm,
        )) {
            return Err(Error::BadKemCiphertext);
        }
        let msg2 = write(&mut hs, &[])?;
        Ok((Self { hs, ss }, msg2))
    }

    /// Reads Noise message 3 (XK only).
    pub fn read_step3(&mut self, msg: &[u8]) -> Result<(), Error> {
        let payload = read(&mut self.hs, msg)?;
        if !payload.is_empty() {
            return Err(Error::HandshakeFailed("message 3 carries a payload".into()));
        }
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.hs.is_handshake_finished()
    }

    pub fn finish(self) -> Result<SessionKeys, Error> {
        if !self.hs.is_handshake_finished() {
            return Err(Error::HandshakeFailed("handshake not finished".into()));
        }
        derive(&self.hs, &self.ss)
    }
}

/// The message a transcript signature covers: `role ‖ len(I) ‖ I ‖ len(R) ‖ R ‖ h`.
pub fn transcript(role: Role, initiator: &PeerId, responder: &PeerId, h: &[u8; 32]) -> Vec<u8> {
    let (i, r) = (initiator.to_bytes(), responder.to_bytes());
    let mut m = Vec::with_capacity(3 + i.len() + r.len() + 32);
    m.push(role as u8);
    m.push(u8::try_from(i.len()).expect("peer ids are short"));
    m.extend_from_slice(&i);
    m.push(u8::try_from(r.len()).expect("peer ids are short"));
    m.extend_from_slice(&r);
    m.extend_from_slice(h);
    m
}

pub fn sign_transcript(
    identity: &Identity,
    role: Role,
    initiator: &PeerId,
    responder: &PeerId,
    h: &[u8; 32],
) -> Vec<u8> {
    identity.sign_ml_dsa(
        &transcript(role, initiator, responder, h),
        TRANSCRIPT_CONTEXT,
    )
}

/// Checks a transcript signature under the ML-DSA-65 key of `binding` (which the caller has verified
/// for the signer's PeerId).
pub fn verify_transcript(
    binding: &Binding,
    signature: &[u8],
    role: Role,
    initiator: &PeerId,
    responder: &PeerId,
    h: &[u8; 32],
) -> Result<(), Error> {
    let vk = binding
        .ml_dsa_verifying_key()
        .ok_or(Error::BadSignature("ML-DSA-65 key"))?;
    let sig = Signature::<MlDsa65>::try_from(signature)
        .map_err(|_| Error::BadSignature("signature encoding"))?;
    if vk.verify_with_context(
        &transcript(role, initiator, responder, h),
        TRANSCRIPT_CONTEXT,
        &sig,
    ) {
        Ok(())
    } else {
        Err(Error::BadSignature("transcript signature"))
    }
}

pub mod v2;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vector;
