//! The ICE-lite STUN responder (`protocols/assist.md` §5): RFC 8489 Binding requests on UDP get
//! the requester's own transport address back (XOR-MAPPED-ADDRESS), and nothing an
//! unauthenticated requester did not ask for: FINGERPRINT only when the request carried one,
//! SOFTWARE only in answers to authenticated checks, so a spoofed request is not amplified.
//! ICE connectivity checks (USERNAME `<ufrag>:<peer ufrag>` + MESSAGE-INTEGRITY) are checked
//! against the credentials `/api/p2p/assist` issued and answered with MESSAGE-INTEGRITY, or 401.
//! Unknown comprehension-required attributes get 420; malformed packets, non-requests and requests
//! whose FINGERPRINT does not match (RFC 8489 §7.3) are dropped; each IP address gets
//! `assist.stun_per_ip_per_second` answers and all of them together `assist.stun_answers_per_second`.
//!
//! Codec: `stun-rs` (RFC 8489, with the ICE attributes registered).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use stun_rs::{
    DecoderContextBuilder, ErrorCode as ErrorCodeType, HMACKey, MessageClass,
    MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessage, StunMessageBuilder,
    attributes::stun::{
        ErrorCode, Fingerprint, MessageIntegrity, Software, UnknownAttributes, UserName,
        XorMappedAddress,
    },
    methods::BINDING,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{
    ice::Credentials,
    rate_limit::{Budget, RateLimiter},
};

/// Largest datagram read; longer ones are truncated and so fail to parse.
pub const MAX_PACKET: usize = 1500;
/// Largest response written.
const MAX_RESPONSE: usize = 512;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// `commucat_stun_requests_total{outcome}`: `ok`, `ok_authenticated`, `unauthorized`,
/// `bad_request`, `unknown_attribute`, `malformed`, `bad_fingerprint`, `rate_limited` (this
/// address's limit), `over_budget` (every address's answers together).
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "stun_requests",
            "STUN datagrams received by the ICE-lite responder, by outcome",
            m.requests.clone(),
        );
        m
    }

    fn count(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Answers STUN on `socket` until `shutdown`.
pub async fn serve(
    socket: UdpSocket,
    credentials: Arc<Credentials>,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let limiter = RateLimiter::new(per_ip(limits.per_ip_per_second));
    let budget = Budget::new(limits.answers_per_second, Duration::from_secs(1));
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let (n, from) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems.
                    tracing::debug!(error = %e, "STUN socket receive error");
                    continue;
                }
            },
        };
        let now = Instant::now();
        if limiter.check(from.ip(), now).is_err() {
            metrics.count("rate_limited");
            continue;
        }
        let (outcome, response) = answer(&buf[..n], from, &credentials);
        metrics.count(outcome.label());
        let Some(response) = response else { continue };
        if !budget.take(now) {
            metrics.count("over_budget");
            continue;
        }
        if let Err(e) = socket.send_to(&response, from).await {
            tracing::debug!(%from, error = %e, "cannot send a STUN response");
        }
    }
}

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    OkAuthenticated,
    Unauthorized,
    BadRequest,
    UnknownAttribute,
    /// Not STUN, not a request, or not parseable: dropped without an answer.
    Dropped,
    /// A FINGERPRINT that does not match the message: dropped without an answer (RFC 8489 §7.3).
    BadFingerprint,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OkAuthenticated => "ok_authenticated",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::UnknownAttribute => "unknown_attribute",
            Outcome::Dropped => "malformed",
            Outcome::BadFingerprint => "bad_fingerprint",
        }
    }
}

/// The answer to one datagram from `from`, if it gets one.
pub fn answer(
    packet: &[u8],
    from: SocketAddr,
    credentials: &Credentials,
) -> (Outcome, Option<Vec<u8>>) {
    let Ok((msg, _)) = MessageDecoderBuilder::default().build().decode(packet) else {
        return (Outcome::Dropped, None);
    };
    let fingerprinted = msg.get::<Fingerprint>().is_some();
    if fingerprinted && !fingerprint_matches(packet) {
        return (Outcome::BadFingerprint, None);
    }
    // Binding indications (keepalives) and responses get no answer.
    if msg.class() != MessageClass::Request {
        return (Outcome::Dropped, None);
    }
    if msg.method() != BINDING {
        return error(&msg, 400, "Bad Request", None, Outcome::BadRequest);
    }
    let unknown: Vec<u16> = msg
        .attributes()
        .iter()
        .filter_map(|a| match a {
            StunAttribute::Unknown(u) if u.attribute_type().is_comprehension_required() => {
                Some(u.attribute_type().as_u16())
            }
            _ => None,
        })
        .collect();
    if !unknown.is_empty() {
        let mut attrs = UnknownAttributes::default();
        for t in unknown {
            attrs.add(t);
        }
        return error(
            &msg,
            420,
            "Unknown Attribute",
            Some(attrs),
            Outcome::UnknownAttribute,
        );
    }
    let username = msg
        .get::<UserName>()
        .and_then(|a| a.as_user_name().ok())
        .map(|u| u.as_str().to_owned());
    let has_integrity = msg.get::<MessageIntegrity>().is_some();
    let key = match (username, has_integrity) {
        (None, false) => None,
        (Some(username), true) => {
            // ICE: USERNAME is "<our ufrag>:<their ufrag>" (RFC 8445 §7.2.2).
            let ufrag = username.split(':').next().unwrap_or_default();
            let Some(password) = credentials.password(ufrag) else {
                return error(&msg, 401, "Unauthorized", None, Outcome::Unauthorized);
            };
            let Ok(key) = HMACKey::new_short_term(password) else {
                return error(&msg, 401, "Unauthorized", None, Outcome::Unauthorized);
            };
            let ctx = DecoderContextBuilder::default()
                .with_key(key.clone())
                .with_validation()
                .build();
            if MessageDecoderBuilder::default()
                .with_context(ctx)
                .build()
                .decode(packet)
                .is_err()
            {
                return error(&msg, 401, "Unauthorized", None, Outcome::Unauthorized);
            }
            Some(key)
        }
        // RFC 8489 §9.1.3: one without the other is a bad request.
        _ => {
            return error(&msg, 400, "Bad Request", None, Outcome::BadRequest);
        }
    };
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*msg.transaction_id())
        .with_attribute(XorMappedAddress::from(from));
    let outcome = match key {
        Some(key) => {
            builder = builder
                .with_attribute(software())
                .with_attribute(MessageIntegrity::new(key));
            Outcome::OkAuthenticated
        }
        None => Outcome::Ok,
    };
    if fingerprinted {
        builder = builder.with_attribute(Fingerprint::default());
    }
    (outcome, encode(&builder.build()))
}

/// RFC 8489 §14.7: the last attribute is FINGERPRINT, and its value is the CRC-32 of the message
/// before it, XOR 0x5354554e. (stun-rs parses the attribute but checks it only with a key.)
fn fingerprint_matches(packet: &[u8]) -> bool {
    const ATTR: [u8; 4] = [0x80, 0x28, 0x00, 0x04];
    let Some(split) = packet.len().checked_sub(8) else {
        return false;
    };
    if split < 20 || packet[split..split + 4] != ATTR {
        return false;
    }
    let crc = crc32fast::hash(&packet[..split]) ^ 0x5354_554e;
    packet[split + 4..] == crc.to_be_bytes()
}

fn software() -> Software {
    Software::new(format!("commucat {}", env!("CARGO_PKG_VERSION")))
        .expect("a short SOFTWARE value")
}

fn error(
    request: &StunMessage,
    code: u16,
    reason: &str,
    unknown: Option<UnknownAttributes>,
    outcome: Outcome,
) -> (Outcome, Option<Vec<u8>>) {
    let Ok(code) = ErrorCodeType::new(code, reason) else {
        return (outcome, None);
    };
    let mut builder = StunMessageBuilder::new(request.method(), MessageClass::ErrorResponse)
        .with_transaction_id(*request.transaction_id())
        .with_attribute(ErrorCode::new(code));
    if let Some(unknown) = unknown {
        builder = builder.with_attribute(unknown);
    }
    if request.get::<Fingerprint>().is_some() {
        builder = builder.with_attribute(Fingerprint::default());
    }
    (outcome, encode(&builder.build()))
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_RESPONSE];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The address the host candidate advertises: `public_ip` if configured, else the socket's own
/// address when it is a specific one.
pub fn advertised(public_ip: Option<IpAddr>, bound: SocketAddr) -> Option<SocketAddr> {
    match public_ip {
        Some(ip) => Some(SocketAddr::new(ip, bound.port())),
        None if !bound.ip().is_unspecified() => Some(bound),
        None => None,
    }
}

/// The responder's limits (`[assist]` `stun_per_ip_per_second`, `stun_answers_per_second`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_ip_per_second: u32,
    pub answers_per_second: u32,
}

/// Per-IP limits of the responder: `per_second` requests per second; over it, refused until the
/// second ends.
fn per_ip(per_second: u32) -> super::rate_limit::Limits {
    super::rate_limit::Limits {
        burst: per_second,
        window: Duration::from_secs(1),
        penalty: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use stun_rs::{TransactionId, attributes::ice::Priority};

    use super::*;

    fn decode(bytes: &[u8]) -> StunMessage {
        MessageDecoderBuilder::default()
            .build()
            .decode(bytes)
            .unwrap()
            .0
    }

    fn request(attrs: Vec<StunAttribute>) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::default());
        for a in attrs {
            b = b.with_attribute(a);
        }
        encode(&b.build()).unwrap()
    }

    #[test]
    fn plain_binding_gets_the_requesters_address() {
        let creds = Credentials::new(Duration::from_secs(60), 10);
        let from: SocketAddr = "203.0.113.7:50000".parse().unwrap();
        let (outcome, resp) = answer(&request(vec![]), from, &creds);
        assert_eq!(outcome, Outcome::Ok);
        let msg = decode(&resp.unwrap());
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        let xor = msg.get::<XorMappedAddress>().unwrap();
        assert_eq!(*xor.as_xor_mapped_address().unwrap().socket_address(), from);
        // Nothing it did not ask for: a 20-byte request gets 32 bytes back.
        assert!(msg.get::<Software>().is_none());
        assert!(msg.get::<Fingerprint>().is_none());
        assert_eq!(resp_len(&request(vec![]), from, &creds), 32);
        // With a FINGERPRINT, one comes back.
        let (outcome, resp) = answer(&request(vec![Fingerprint::default().into()]), from, &creds);
        assert_eq!(outcome, Outcome::Ok);
        let resp = resp.unwrap();
        assert!(decode(&resp).get::<Fingerprint>().is_some());
        assert!(fingerprint_matches(&resp), "our own FINGERPRINT checks out");
    }

    fn resp_len(req: &[u8], from: SocketAddr, creds: &Credentials) -> usize {
        answer(req, from, creds).1.map_or(0, |r| r.len())
    }

    /// RFC 5769 §2.1, the sample request: its FINGERPRINT must check out here (an implementation
    /// nobody on this team wrote computed it), and one flipped bit must not.
    #[test]
    fn the_rfc_5769_sample_request_fingerprint_checks_out() {
        let sample = hex::decode(
            "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20\
             7465737420636c69656e74002400046e0001ff80290008932ff9b15126\
             3b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb\
             56781ef2b5b2d3f249c1b571a280280004e57a3bcf",
        )
        .unwrap();
        assert!(fingerprint_matches(&sample));
        let mut flipped = sample.clone();
        flipped[30] ^= 1;
        assert!(!fingerprint_matches(&flipped));
    }

    #[test]
    fn a_wrong_fingerprint_is_dropped() {
        // RFC 8489 §7.3: a request whose FINGERPRINT does not match is discarded, unanswered.
        let creds = Credentials::new(Duration::from_secs(60), 10);
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let good = request(vec![Fingerprint::default().into()]);
        assert!(fingerprint_matches(&good));
        for i in [0, 8, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let (outcome, resp) = answer(&bad, from, &creds);
            assert!(resp.is_none(), "byte {i} flipped: {outcome:?}");
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert_eq!(answer(&bad, from, &creds), (Outcome::BadFingerprint, None));
    }

    #[test]
    fn ice_checks_are_authenticated() {
        let creds = Credentials::new(Duration::from_secs(60), 10);
        let (ufrag, password) = creds.issue();
        let from: SocketAddr = "[2001:db8::7]:4444".parse().unwrap();
        let check = |pw: &str| {
            request(vec![
                UserName::new(format!("{ufrag}:peer")).unwrap().into(),
                Priority::from(1_845_501_695).into(),
                MessageIntegrity::new(HMACKey::new_short_term(pw).unwrap()).into(),
                Fingerprint::default().into(),
            ])
        };
        let (outcome, resp) = answer(&check(&password), from, &creds);
        assert_eq!(outcome, Outcome::OkAuthenticated);
        let ctx = DecoderContextBuilder::default()
            .with_key(HMACKey::new_short_term(&password).unwrap())
            .with_validation()
            .build();
        let msg = MessageDecoderBuilder::default()
            .with_context(ctx)
            .build()
            .decode(&resp.unwrap())
            .expect("the response's MESSAGE-INTEGRITY verifies with the ICE password")
            .0;
        assert_eq!(msg.class(), MessageClass::SuccessResponse);

        let (outcome, resp) = answer(&check("wrong password"), from, &creds);
        assert_eq!(outcome, Outcome::Unauthorized);
        let msg = decode(&resp.unwrap());
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        let code = msg.get::<ErrorCode>().unwrap().as_error_code().unwrap();
        assert_eq!(code.error_code().error_code(), 401);
    }

    #[test]
    fn unknown_required_attributes_get_420_and_garbage_is_dropped() {
        let creds = Credentials::new(Duration::from_secs(60), 10);
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        // A Binding request with a comprehension-required attribute 0x7777 nobody knows.
        let mut pkt = request(vec![]);
        pkt.extend_from_slice(&[0x77, 0x77, 0x00, 0x04, 1, 2, 3, 4]);
        pkt[3] = 8;
        let (outcome, resp) = answer(&pkt, from, &creds);
        assert_eq!(outcome, Outcome::UnknownAttribute);
        let msg = decode(&resp.unwrap());
        let unknown = msg
            .get::<UnknownAttributes>()
            .unwrap()
            .as_unknown_attributes()
            .unwrap();
        assert_eq!(unknown.attributes(), [0x7777]);

        for junk in [&b""[..], b"hello", &[0u8; 20], &pkt[..25]] {
            assert_eq!(answer(junk, from, &creds), (Outcome::Dropped, None));
        }
    }
}
