//! The session handshake (`protocols/data-v1.md` §3): HELLO / BUNDLE / HANDSHAKE / AUTH in
//! cleartext frames around [`crate::crypto::handshake`], for the initiator ([`initiate`]) and the
//! responder ([`respond`]), within [`HANDSHAKE_TIMEOUT`]; a failure is reported to the peer with
//! an ERROR frame before the stream closes. Both pick the version; version 2 is in [`super::v2`].

use super::*;

/// The cleartext phase: frames, and an ERROR sent before giving up.
pub(super) struct Cleartext<S> {
    frames: FramedRead<ReadHalf<S>, FrameCodec>,
    io: WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Cleartext<S> {
    pub(super) fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            frames: FramedRead::new(r, FrameCodec),
            io: w,
        }
    }

    /// The cleartext phase's result; a failure is first reported to the peer.
    pub(super) async fn reported<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            self.report(e).await;
        }
        result
    }

    pub(super) async fn send(&mut self, frames: &[Frame]) -> Result<(), Error> {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Writes frames already encoded.
    pub(super) async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    pub(super) async fn recv(&mut self) -> Result<Frame, Error> {
        match self.frames.next().await {
            None => Err(Error::Closed),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Frame::Error { code, message })) => Err(Error::Remote { code, message }),
            Some(Ok(f)) => Ok(f),
        }
    }

    /// Tells the peer why we give up (cleartext ERROR), if the failure is ours to report. Bounded
    /// in time: a peer that stopped reading cannot hold us here.
    async fn report(&mut self, e: &Error) {
        if let Some((code, message)) = e.to_report() {
            let _ = tokio::time::timeout(REPORT_TIMEOUT, async {
                let _ = self.send(&[Frame::Error { code, message }]).await;
                let _ = self.io.shutdown().await;
            })
            .await;
        }
    }

    /// A version 1 session.
    fn into_session(
        self,
        sealer: Sealer,
        opener: Opener,
        remote: PeerId,
        pattern: Pattern,
    ) -> Session<S> {
        Session {
            reader: Reader {
                frames: self.frames,
                opener,
                keys: None,
                awaiting_finished: None,
            },
            writer: Writer {
                io: self.io,
                sealer,
                buf: Vec::new(),
                keys: None,
                unsettled: 0,
            },
            remote,
            pattern,
            version: 1,
            remote_bundle: None,
        }
    }

    /// A version 2 session of `role` under `keys`, whose writer starts with `queued` (frames of
    /// the handshake not sent yet); the peer's FINISHED is counted in `counters` when it arrives.
    pub(super) fn into_v2_session(
        self,
        ctx: &Context,
        role: Role,
        keys: crypto::SessionKeys,
        remote: PeerId,
        pattern: Pattern,
        queued: Vec<u8>,
    ) -> Session<S> {
        let (send, receive) = match role {
            Role::Initiator => (keys.initiator_to_responder, keys.responder_to_initiator),
            Role::Responder => (keys.responder_to_initiator, keys.initiator_to_responder),
        };
        let shared =
            rekey::KeyState::shared(role, keys, ctx.rekey, ctx.counters.key_updates.clone());
        Session {
            reader: Reader {
                frames: self.frames,
                opener: Opener::new(&receive),
                keys: Some(shared.clone()),
                awaiting_finished: Some(ctx.counters.post_quantum.clone()),
            },
            writer: Writer {
                io: self.io,
                sealer: Sealer::new(&send),
                buf: queued,
                keys: Some(shared),
                unsettled: 0,
            },
            remote,
            pattern,
            version: 2,
            remote_bundle: None,
        }
    }
}

pub(super) fn unexpected(f: &Frame, wanted: &str) -> Error {
    Error::protocol(
        ErrorCode::UNEXPECTED_FRAME,
        format!("expected {wanted}, got {}", frame_name(f)),
    )
}

pub(super) async fn with_timeout<T>(
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .unwrap_or(Err(Error::Timeout))
}

/// Runs the initiator's side over `stream` to `remote` (authenticated by the libp2p connection),
/// in the newest version both speak as far as `ctx` knows. With `known` (a bundle verified
/// earlier, e.g. from the DHT) the handshake is IK; else version 1 fetches the bundle and runs XK,
/// version 2 runs XX with both bundles beside it. A peer that answers version 2 with
/// `UNSUPPORTED_VERSION` is remembered and spoken to in version 1 next time.
pub async fn initiate<S: AsyncRead + AsyncWrite>(
    stream: S,
    ctx: &Context,
    remote: PeerId,
    known: Option<Bundle>,
) -> Result<Session<S>, Error> {
    if ctx.version_for(&remote) < 2 {
        return initiate_v1(stream, ctx, remote, known).await;
    }
    let result = v2::initiate(Cleartext::new(stream), ctx, remote, known).await;
    if let Err(e) = &result
        && e.code() == Some(ErrorCode::UNSUPPORTED_VERSION)
        && matches!(e, Error::Remote { .. })
    {
        tracing::debug!(%remote, "the peer speaks only version 1 of /commucat/data");
        ctx.remember_version_1(remote);
    }
    result
}

async fn initiate_v1<S: AsyncRead + AsyncWrite>(
    stream: S,
    ctx: &Context,
    remote: PeerId,
    known: Option<Bundle>,
) -> Result<Session<S>, Error> {
    let local = &*ctx.keys;
    let mut c = Cleartext::new(stream);
    let result = with_timeout(initiate_inner(&mut c, ctx, remote, known)).await;
    let (keys, bundle, pattern) = c.reported(result).await?;
    let mut session = c.into_session(
        Sealer::new(&keys.initiator_to_responder),
        Opener::new(&keys.responder_to_initiator),
        remote,
        pattern,
    );
    let local_id = local.identity.peer_id();
    let h = keys.handshake_hash;
    let b = local.identity.binding();
    let auth = Inner::Auth {
        binding: Some(BindingParts {
            ml_dsa_public: Bytes::copy_from_slice(&b.ml_dsa_public),
            ed25519_signature: Bytes::copy_from_slice(&b.ed25519_signature),
            ml_dsa_signature: Bytes::copy_from_slice(&b.ml_dsa_signature),
        }),
        signature: handshake::sign_transcript(
            &local.identity,
            Role::Initiator,
            &local_id,
            &remote,
            &h,
        )
        .into(),
    };
    let check = |theirs| match theirs {
        Some(Inner::Auth {
            binding: None,
            signature,
        }) => Ok(handshake::verify_transcript(
            bundle.binding(),
            &signature,
            Role::Responder,
            &local_id,
            &remote,
            &h,
        )?),
        other => Err(not_auth(other, "expected AUTH")),
    };
    session.authenticate(&auth, check, &ctx.counters).await?;
    session.remote_bundle = Some(bundle);
    Ok(session)
}

async fn initiate_inner<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
    known: Option<Bundle>,
) -> Result<(crypto::SessionKeys, Bundle, Pattern), Error> {
    let (bundle, pattern, mut out) = match known {
        Some(b) => (
            b,
            Pattern::Ik,
            vec![Frame::Hello {
                version: 1,
                need_bundle: false,
                bundle_follows: false,
            }],
        ),
        None => {
            c.send(&[Frame::Hello {
                version: 1,
                need_bundle: true,
                bundle_follows: false,
            }])
            .await?;
            match c.recv().await? {
                Frame::Bundle(bytes) => (
                    ctx.bundles.verify(&bytes, &remote)?,
                    Pattern::Xk,
                    Vec::new(),
                ),
                other => return Err(unexpected(&other, "BUNDLE")),
            }
        }
    };
    let (mut init, msg1) = Initiator::start(&ctx.keys.bundle.current(), &bundle, pattern)?;
    out.push(Frame::Handshake {
        step: 1,
        pattern: pattern as u8,
        bundle_id: Some(bundle.id()),
        noise: msg1.into(),
    });
    c.send(&out).await?;
    let msg2 = match c.recv().await? {
        Frame::Handshake {
            step: 2,
            pattern: p,
            noise,
            ..
        } if p == pattern as u8 => noise,
        other => return Err(unexpected(&other, "HANDSHAKE step 2")),
    };
    if let Some(msg3) = init.read_step2(&msg2)? {
        c.send(&[Frame::Handshake {
            step: 3,
            pattern: pattern as u8,
            bundle_id: None,
            noise: msg3.into(),
        }])
        .await?;
    }
    let keys = init.finish()?;
    ctx.counters.noise_done(1);
    Ok((keys, bundle, pattern))
}

/// What a HELLO asked for.
pub(super) struct Hello {
    pub(super) need_bundle: bool,
    pub(super) bundle_follows: bool,
}

/// Runs the responder's side over `stream`, opened by `remote` (authenticated by the libp2p
/// connection), in the version its HELLO names (up to `ctx.version`).
pub async fn respond<S: AsyncRead + AsyncWrite>(
    stream: S,
    ctx: &Context,
    remote: PeerId,
) -> Result<Session<S>, Error> {
    let mut c = Cleartext::new(stream);
    let hello = with_timeout(async {
        match c.recv().await? {
            // As a node of that version would: its decoder knows no newer version.
            Frame::Hello { version, .. } if version > ctx.version => {
                Err(DecodeError::UnsupportedVersion(version).into())
            }
            Frame::Hello {
                version,
                need_bundle,
                bundle_follows,
            } => Ok((
                version,
                Hello {
                    need_bundle,
                    bundle_follows,
                },
            )),
            other => Err(unexpected(&other, "HELLO")),
        }
    })
    .await;
    let (version, hello) = c.reported(hello).await?;
    if version >= 2 {
        return v2::respond(c, ctx, remote, hello).await;
    }
    respond_v1(c, &ctx.keys, remote, hello.need_bundle, &ctx.counters).await
}

async fn respond_v1<S: AsyncRead + AsyncWrite>(
    mut c: Cleartext<S>,
    local: &LocalKeys,
    remote: PeerId,
    need_bundle: bool,
    counters: &HandshakeCounters,
) -> Result<Session<S>, Error> {
    let result = with_timeout(respond_inner(&mut c, local, need_bundle, counters)).await;
    let (keys, pattern) = c.reported(result).await?;
    let mut session = c.into_session(
        Sealer::new(&keys.responder_to_initiator),
        Opener::new(&keys.initiator_to_responder),
        remote,
        pattern,
    );
    let local_id = local.identity.peer_id();
    let h = keys.handshake_hash;
    let auth = Inner::Auth {
        binding: None,
        signature: handshake::sign_transcript(
            &local.identity,
            Role::Responder,
            &remote,
            &local_id,
            &h,
        )
        .into(),
    };
    let check = |theirs| match theirs {
        Some(Inner::Auth {
            binding: Some(parts),
            signature,
        }) => {
            let binding = Binding {
                peer_id: remote,
                ml_dsa_public: parts.ml_dsa_public.to_vec(),
                ed25519_signature: parts.ed25519_signature.to_vec(),
                ml_dsa_signature: parts.ml_dsa_signature.to_vec(),
            };
            binding
                .verify()
                .map_err(|e| Error::protocol(ErrorCode::BAD_SIGNATURE, e.to_string()))?;
            Ok(handshake::verify_transcript(
                &binding,
                &signature,
                Role::Initiator,
                &remote,
                &local_id,
                &h,
            )?)
        }
        other => Err(not_auth(
            other,
            "expected AUTH with the initiator's identity binding",
        )),
    };
    session.authenticate(&auth, check, counters).await?;
    Ok(session)
}

async fn respond_inner<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    local: &LocalKeys,
    need_bundle: bool,
    counters: &HandshakeCounters,
) -> Result<(crypto::SessionKeys, Pattern), Error> {
    if need_bundle {
        c.send(&[Frame::Bundle(local.bundle.current().bundle().to_bytes())])
            .await?;
    }
    let (pattern, bundle_id, msg1) = step1(c.recv().await?, 1)?;
    let keys = named_bundle(local, bundle_id)?;
    let (mut resp, msg2) = Responder::read_step1(&keys, pattern, &msg1)?;
    c.send(&[Frame::Handshake {
        step: 2,
        pattern: pattern as u8,
        bundle_id: None,
        noise: msg2.into(),
    }])
    .await?;
    if pattern == Pattern::Xk {
        match c.recv().await? {
            Frame::Handshake {
                step: 3,
                pattern: 1,
                noise,
                ..
            } => resp.read_step3(&noise)?,
            other => return Err(unexpected(&other, "HANDSHAKE step 3")),
        }
    }
    let keys = resp.finish()?;
    counters.noise_done(1);
    Ok((keys, pattern))
}

/// HANDSHAKE step 1 as protocol `version` runs it: its pattern, the bundle id it names and
/// Noise message 1.
pub(super) fn step1(
    frame: Frame,
    version: u8,
) -> Result<(Pattern, Option<BundleId>, Bytes), Error> {
    match frame {
        Frame::Handshake {
            step: 1,
            pattern,
            bundle_id,
            noise,
        } => {
            let pattern = Pattern::of_version(pattern, version).ok_or_else(|| {
                Error::protocol(
                    ErrorCode::HANDSHAKE_FAILED,
                    format!("pattern {pattern} is not one of version {version}"),
                )
            })?;
            Ok((pattern, bundle_id, noise))
        }
        other => Err(unexpected(&other, "HANDSHAKE step 1")),
    }
}

/// Our bundle that `id` names: the current one, or one it replaced that has not expired
/// (data-v1.md §4.1); else `STALE_BUNDLE`.
pub(super) fn named_bundle(
    local: &LocalKeys,
    id: Option<BundleId>,
) -> Result<Arc<bundle::Keys>, Error> {
    id.and_then(|id| local.bundle.find(&id, crate::time::unix_secs()))
        .ok_or_else(|| {
            Error::protocol(
                ErrorCode::STALE_BUNDLE,
                "unknown bundle id: fetch the bundle again",
            )
        })
}

/// What arrived instead of the AUTH frame: another frame (a protocol error), or the end.
fn not_auth(frame: Option<Inner>, wanted: &'static str) -> Error {
    match frame {
        Some(_) => Error::protocol(ErrorCode::UNEXPECTED_FRAME, wanted),
        None => Error::Closed,
    }
}

impl<S: AsyncRead + AsyncWrite> Session<S> {
    /// The end of the handshake, encrypted: sends our AUTH, checks the peer's with `check`, both
    /// within [`HANDSHAKE_TIMEOUT`]; a failure is reported to the peer.
    async fn authenticate(
        &mut self,
        ours: &Inner,
        check: impl FnOnce(Option<Inner>) -> Result<(), Error>,
        counters: &HandshakeCounters,
    ) -> Result<(), Error> {
        let verified = with_timeout(async {
            self.writer.send(ours).await?;
            check(self.reader.recv().await?)
        })
        .await;
        if let Err(e) = verified {
            self.writer.report(&e).await;
            return Err(e);
        }
        counters.post_quantum.inc();
        Ok(())
    }
}
