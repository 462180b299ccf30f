//! The version 2 handshake over frames (`protocols/data-v2.md` §3): HELLO, the bundles each side
//! lacks, Noise IK or XX with the three ML-KEM-768 secrets of [`handshake::v2`], then FINISHED
//! both ways. No signatures are made or checked per session: bundles are verified once
//! ([`crate::crypto::bundle::Cache`]).

use super::setup::{Cleartext, Hello, named_bundle, step1, unexpected, with_timeout};
use super::*;

/// The initiator's side, from HELLO to a session whose first frame (FINISHED) is queued and
/// written; the responder's FINISHED is checked by the reader when it arrives.
pub(super) async fn initiate<S: AsyncRead + AsyncWrite>(
    mut c: Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
    known: Option<Bundle>,
) -> Result<Session<S>, Error> {
    let result = with_timeout(initiate_inner(&mut c, ctx, remote, known)).await;
    let (keys, bundle, pattern, queued) = c.reported(result).await?;
    ctx.counters.noise_done(2);
    let fetched = (pattern == Pattern::Xx).then_some(bundle);
    let mut session = c.into_v2_session(ctx, Role::Initiator, keys, remote, pattern, queued);
    session.writer.queue(&Inner::Finished)?;
    session.writer.flush().await?;
    session.remote_bundle = fetched;
    Ok(session)
}

type Started = (crypto::SessionKeys, Bundle, Pattern, Vec<u8>);

/// The next frame, unless the check of the peer's bundle fails first.
async fn recv_checked<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    checking: Option<&mut Checking>,
    ctx: &Context,
) -> Result<Frame, Error> {
    match checking {
        Some(ch) if ch.check.is_some() => tokio::select! {
            f = c.recv() => f,
            e = ch.failure(ctx) => Err(e),
        },
        _ => c.recv().await,
    }
}

/// A peer's bundle in use while its signatures are checked beside the handshake, on the blocking
/// pool: nothing the handshake sends before the check passed is secret, and no sealed frame is
/// sent or taken before it (`protocols/data-v2.md` §3).
struct Checking {
    bundle: Bundle,
    check: Option<tokio::task::JoinHandle<Result<Bundle, crypto::Error>>>,
}

impl Checking {
    /// `bytes` as `remote`'s bundle: from the cache, or parsed and being checked.
    fn start(ctx: &Context, bytes: Bytes, remote: PeerId) -> Result<Self, Error> {
        if let Some(bundle) = ctx.bundles.hit(&bytes, &remote) {
            return Ok(Self {
                bundle,
                check: None,
            });
        }
        let bundle = Bundle::parse_unverified(&bytes, &remote)?;
        let check = tokio::task::spawn_blocking(move || Bundle::verify(&bytes, &remote));
        Ok(Self {
            bundle,
            check: Some(check),
        })
    }

    /// Resolves only when the check fails, with its error; a check that passes is kept (and
    /// cached) and this stays pending.
    async fn failure(&mut self, ctx: &Context) -> Error {
        if let Some(check) = &mut self.check {
            match check.await {
                Ok(Ok(bundle)) => {
                    ctx.bundles.insert(bundle);
                    self.check = None;
                }
                Ok(Err(e)) => return e.into(),
                Err(e) => {
                    return Error::protocol(ErrorCode::INTERNAL, format!("bundle check: {e}"));
                }
            }
        }
        std::future::pending().await
    }

    /// The bundle once its check passed (then it is cached).
    async fn passed(self, ctx: &Context) -> Result<Bundle, Error> {
        let Some(check) = self.check else {
            return Ok(self.bundle);
        };
        let bundle = check
            .await
            .map_err(|e| Error::protocol(ErrorCode::INTERNAL, format!("bundle check: {e}")))??;
        ctx.bundles.insert(bundle.clone());
        Ok(bundle)
    }
}

async fn initiate_inner<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
    known: Option<Bundle>,
) -> Result<Started, Error> {
    let local = ctx.keys.bundle.current();
    let local_id = ctx.keys.peer_id();
    let own = || Frame::Bundle(local.bundle().to_bytes());
    let follows = known.is_none() || !ctx.holds_our_bundle(&remote, &local.bundle().id());
    let mut out = vec![Frame::Hello {
        version: 2,
        need_bundle: known.is_none(),
        bundle_follows: follows,
    }];
    if follows {
        out.push(own());
    }
    // IK to a bundle we hold; XX at first contact, its bundle coming with its answer.
    let (mut init, msg1, pattern, bundle_id) = match &known {
        Some(b) => {
            let (init, msg1) =
                handshake::v2::Initiator::start_ik(local.clone(), b, &local_id, None)?;
            (init, msg1, Pattern::Ik, b.id())
        }
        None => {
            let (init, msg1) =
                handshake::v2::Initiator::start_xx(local.clone(), &local_id, &remote, None)?;
            (init, msg1, Pattern::Xx, [0; 16])
        }
    };
    out.push(Frame::Handshake {
        step: 1,
        pattern: pattern as u8,
        bundle_id: Some(bundle_id),
        noise: msg1.into(),
    });
    c.send(&out).await?;
    let mut theirs = known.map(|bundle| Checking {
        bundle,
        check: None,
    });
    let mut asked = false;
    let msg2 = loop {
        match recv_checked(c, theirs.as_mut(), ctx).await? {
            Frame::Handshake {
                step: 2,
                pattern: p,
                noise,
                ..
            } if p == pattern as u8 => break noise,
            Frame::Bundle(bytes) if theirs.is_none() => {
                let checking = Checking::start(ctx, bytes, remote)?;
                init.prepare(&checking.bundle);
                theirs = Some(checking);
            }
            // The responder does not hold our bundle (it forgot it): once.
            Frame::BundleRequest if !asked => {
                asked = true;
                c.send(&[own()]).await?;
            }
            other => return Err(unexpected(&other, "HANDSHAKE step 2")),
        }
    };
    let theirs = theirs.ok_or_else(|| {
        Error::protocol(
            ErrorCode::UNEXPECTED_FRAME,
            "HANDSHAKE step 2 before the responder's BUNDLE",
        )
    })?;
    let mut queued = Vec::new();
    if let Some(msg3) = init.read_step2(&msg2, Some(&theirs.bundle))? {
        // Written together with FINISHED (and the caller's first frames).
        Frame::Handshake {
            step: 3,
            pattern: pattern as u8,
            bundle_id: None,
            noise: msg3.into(),
        }
        .encode(&mut queued);
    }
    let keys = init.finish()?;
    let bundle = theirs.passed(ctx).await?;
    // It answered with a ciphertext to our bundle: it holds it.
    ctx.remember_holds(remote, local.bundle().id());
    Ok((keys, bundle, pattern, queued))
}

/// The responder's side after HELLO, to a session whose peer FINISHED has been checked.
pub(super) async fn respond<S: AsyncRead + AsyncWrite>(
    mut c: Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
    hello: Hello,
) -> Result<Session<S>, Error> {
    let result = with_timeout(respond_inner(&mut c, ctx, remote, hello)).await;
    let (keys, pattern, queued) = c.reported(result).await?;
    ctx.counters.noise_done(2);
    let mut session = c.into_v2_session(ctx, Role::Responder, keys, remote, pattern, queued);
    let confirmed = with_timeout(async {
        session.writer.queue(&Inner::Finished)?;
        session.writer.flush().await?;
        session.reader.expect_finished().await
    })
    .await;
    if let Err(e) = confirmed {
        session.writer.report(&e).await;
        return Err(e);
    }
    Ok(session)
}

async fn respond_inner<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
    hello: Hello,
) -> Result<(crypto::SessionKeys, Pattern, Vec<u8>), Error> {
    // The bundle sent is the one XX runs with, even if a rotation comes in between.
    let current = ctx.keys.bundle.current();
    if hello.need_bundle {
        c.send(&[Frame::Bundle(current.bundle().to_bytes())])
            .await?;
    }
    let mut theirs = None;
    if hello.bundle_follows {
        theirs = Some(recv_bundle(c, ctx, remote).await?);
    }
    let (pattern, bundle_id, msg1) = step1(recv_checked(c, theirs.as_mut(), ctx).await?, 2)?;
    // IK: the bundle the initiator named. XX: the current one, sent on HELLO.
    let keys = match pattern {
        Pattern::Xx => current,
        _ => named_bundle(&ctx.keys, bundle_id)?,
    };
    let step1 = handshake::v2::Responder::read_step1(keys, pattern, &msg1, &remote, None)?;
    let named = step1.initiator_bundle();
    // A bundle that followed HELLO must be the one message 1 names (checked by `reply`).
    let initiator = match theirs {
        Some(b) => b,
        None => match ctx.bundles.get(&remote, &named) {
            Some(bundle) => Checking {
                bundle,
                check: None,
            },
            None => {
                c.send(&[Frame::BundleRequest]).await?;
                recv_bundle(c, ctx, remote).await?
            }
        },
    };
    let mut initiator = initiator;
    let (mut resp, msg2) = step1.reply(&initiator.bundle, None)?;
    let mut queued = Vec::new();
    Frame::Handshake {
        step: 2,
        pattern: pattern as u8,
        bundle_id: None,
        noise: msg2.into(),
    }
    .encode(&mut queued);
    if pattern == Pattern::Xx {
        c.send_raw(&std::mem::take(&mut queued)).await?;
        match recv_checked(c, Some(&mut initiator), ctx).await? {
            Frame::Handshake {
                step: 3,
                pattern: 3,
                noise,
                ..
            } => resp.read_step3(&noise)?,
            other => return Err(unexpected(&other, "HANDSHAKE step 3")),
        }
    }
    let keys = resp.finish()?;
    initiator.passed(ctx).await?;
    Ok((keys, pattern, queued))
}

/// The initiator's BUNDLE, being checked for `remote` (or taken from the cache).
async fn recv_bundle<S: AsyncRead + AsyncWrite>(
    c: &mut Cleartext<S>,
    ctx: &Context,
    remote: PeerId,
) -> Result<Checking, Error> {
    match c.recv().await? {
        Frame::Bundle(bytes) => Checking::start(ctx, bytes, remote),
        other => Err(unexpected(&other, "the initiator's BUNDLE")),
    }
}

#[cfg(test)]
mod tests;
