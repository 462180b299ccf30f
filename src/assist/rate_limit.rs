//! Per-IP request limits of the assist API and the STUN responder: at most `burst` requests per
//! `window`; an address that goes over is refused for `penalty`. IPv6 addresses count per /64
//! (one subscriber), IPv4 per address. The table of addresses is bounded.
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

pub struct RateLimiter {
    limits: Limits,
    max_tracked: usize,
    slots: Mutex<HashMap<IpAddr, Slot>>,
}

/// The key an address counts under: itself (IPv4) or its /64 (IPv6).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl RateLimiter {
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

    /// Counts a request from `ip`; `Err(retry_after)` if it must be refused.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(ip);
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
            slot.window_start = now;
            slot.count = 0;
        }
        if now - slot.window_start >= self.limits.window {
            slot.window_start = now;
            slot.count = 0;
        }
        slot.count += 1;
        if slot.count > self.limits.burst {
            slot.blocked_until = Some(now + self.limits.penalty);
            return Err(self.limits.penalty.max(Duration::from_secs(1)));
        }
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
}
