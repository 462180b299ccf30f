//! Request limits of the assist API and the STUN responder: at most `burst` requests per `window`
//! per key; a key that goes over is refused for `penalty` (with no penalty: until its window ends).
//! Keys are source addresses — IPv6 counted per /64 (one subscriber), IPv4 per address — or, for
//! path probes, bearer tokens. The table of keys is bounded.
//!
//! `Bucket` is a per-session token bucket over messages (signaling sessions, gateway
//! DataChannels).
//!
//! Hand-written rather than `governor`: the penalty box and a hard bound on tracked addresses
//! are what is needed here, and both are a few lines.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Addresses tracked at once. When full, idle entries are dropped; if none is idle, requests from
/// new addresses are refused until some are.
pub const MAX_TRACKED_IPS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub burst: u32,
    pub window: Duration,
    pub penalty: Duration,
}

struct Slot {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

pub struct RateLimiter<K = IpAddr> {
    limits: Limits,
    max_tracked: usize,
    slots: Mutex<HashMap<K, Slot>>,
}

impl RateLimiter<IpAddr> {
    /// Counts a request from `ip` (IPv6: its /64); `Err(retry_after)` if it must be refused.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.check_n(crate::net::subscriber(ip), 1, now)
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED_IPS)
    }

    pub fn with_capacity(limits: Limits, max_tracked: usize) -> Self {
        Self {
            limits,
            max_tracked,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `n` requests under `k`; `Err(retry_after)` if they must be refused (and then none
    /// of them is counted).
    pub fn check_n(&self, k: K, n: u32, now: Instant) -> Result<(), Duration> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&k) && slots.len() >= self.max_tracked {
            let window = self.limits.window;
            slots.retain(|_, s| {
                s.blocked_until.is_some_and(|t| t > now) || now - s.window_start < window
            });
            if slots.len() >= self.max_tracked {
                return Err(self.limits.window);
            }
        }
        let slot = slots.entry(k).or_insert(Slot {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if let Some(until) = slot.blocked_until {
            if until > now {
                return Err(until - now);
            }
            slot.blocked_until = None;
        }
        // The window restarts only when it has run out, never because a penalty ended: with a
        // zero penalty that reset let every 51st request open a fresh window (a STUN flood of
        // 100,000 got 98% answered against a limit of 50/s).
        if now - slot.window_start >= self.limits.window {
            slot.window_start = now;
            slot.count = 0;
        }
        if slot.count.saturating_add(n) > self.limits.burst {
            if self.limits.penalty.is_zero() {
                // Refused until the window ends.
                return Err(self.limits.window - (now - slot.window_start));
            }
            slot.blocked_until = Some(now + self.limits.penalty);
            return Err(self.limits.penalty.max(Duration::from_secs(1)));
        }
        slot.count += n;
        Ok(())
    }

    /// Addresses being refused right now.
    pub fn limited(&self, now: Instant) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter(|s| s.blocked_until.is_some_and(|t| t > now))
            .count()
    }
}

/// A budget shared by every address: at most `per_window` uses per `window` (the STUN responder's
/// answers per second, whoever asks).
pub struct Budget {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32)>,
}

impl Budget {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes one use; false when this window's budget is spent.
    pub fn take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, used) = &mut *state;
        if now.saturating_duration_since(*start) >= self.window {
            *start = now;
            *used = 0;
        }
        if *used >= self.per_window {
            return false;
        }
        *used += 1;
        true
    }
}

/// A per-session token bucket over messages (signaling sessions, gateway DataChannels).
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    /// Messages refused in a row; many in a row end the session.
    refused: u32,
}

/// Refused messages in a row that end the session.
pub const MAX_REFUSED_IN_A_ROW: u32 = 100;

impl Bucket {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(per_second),
            burst: f64::from(burst),
            refused: 0,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

impl Bucket {
    /// Messages refused in a row (see [`MAX_REFUSED_IN_A_ROW`]).
    pub(crate) fn refused(&self) -> u32 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            burst: 3,
            window: Duration::from_secs(10),
            penalty: Duration::from_secs(30),
        }
    }

    #[test]
    fn burst_then_penalty_then_fresh_window() {
        let rl = RateLimiter::new(limits());
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            rl.check(a, t).unwrap();
        }
        assert_eq!(rl.check(a, t), Err(Duration::from_secs(30)));
        assert_eq!(rl.limited(t), 1);
        assert_eq!(
            rl.check(a, t + Duration::from_secs(20)),
            Err(Duration::from_secs(10))
        );
        // Another address is not affected; after the penalty, a fresh window.
        rl.check("192.0.2.2".parse().unwrap(), t).unwrap();
        rl.check(a, t + Duration::from_secs(31)).unwrap();
        assert_eq!(rl.limited(t + Duration::from_secs(31)), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_is_bounded() {
        let rl = RateLimiter::with_capacity(limits(), 2);
        let t = Instant::now();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
            rl.check(host.parse().unwrap(), t).unwrap();
        }
        assert!(rl.check("2001:db8::4".parse().unwrap(), t).is_err());
        rl.check("192.0.2.1".parse().unwrap(), t).unwrap();
        assert!(
            rl.check("192.0.2.9".parse().unwrap(), t).is_err(),
            "table full, nothing idle"
        );
        rl.check("192.0.2.9".parse().unwrap(), t + Duration::from_secs(11))
            .expect("idle entries make room");
    }

    #[test]
    fn a_zero_penalty_refuses_until_the_window_ends() {
        // The STUN responder's limits: 50 per second, no penalty. A flood in one window gets 50
        // through, however many more it sends (the old limiter let every 51st open a new window).
        let rl = RateLimiter::new(Limits {
            burst: 50,
            window: Duration::from_secs(1),
            penalty: Duration::ZERO,
        });
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let passed = (0..100_000u32)
            .filter(|i| rl.check(a, t + Duration::from_nanos(u64::from(*i))).is_ok())
            .count();
        assert_eq!(passed, 50);
        let retry = rl.check(a, t + Duration::from_millis(400)).unwrap_err();
        assert_eq!(retry, Duration::from_millis(600));
        rl.check(a, t + Duration::from_secs(1))
            .expect("a new window after a second");
    }

    #[test]
    fn the_shared_budget_caps_every_address_together() {
        let b = Budget::new(3, Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!((0..10).filter(|_| b.take(t)).count(), 3);
        assert!(!b.take(t + Duration::from_millis(999)));
        assert!(b.take(t + Duration::from_secs(1)));
    }
}
