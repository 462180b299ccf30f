//! `futures_timer::Delay` on tokio's timer wheel.
//!
//! libp2p (ping, identify, Kademlia, AutoNAT, relay, DCUtR, request-response, the swarm's idle
//! connections) registers its timers with futures-timer, whose one global thread keeps every
//! timer of the process in a heap and wakes the task that waits on it from that thread. With
//! thousands of connections (a bootstrap node, or simnet's 1,000 nodes in one process) that
//! thread and the cross-thread wake-ups it costs took ~15% of the CPU (perf). This crate replaces
//! futures-timer 3.0.3 in the whole workspace (`[patch.crates-io]` in the root Cargo.toml) with
//! the same API over `tokio::time::Sleep`: a timer is registered with the tokio runtime that is
//! current where the `Delay` is created, and fires on that runtime's workers.
//!
//! A `Delay` created outside any tokio runtime (a libp2p type built in a plain thread, or a test
//! executor) uses a runtime of its own, started on first use on one thread, which only drives
//! timers. So does one created on a current-thread runtime, unless the process said that its
//! current-thread runtimes drive their own timers ([`timers_on_current_thread_runtimes`]: simnet's
//! virtual time, where the runtime's clock is paused and every timer must be on it).

#![deny(missing_docs)]

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    runtime::{Handle, RuntimeFlavor},
    time::{Instant, Sleep},
};

/// A future that completes once, `dur` after it was created or last reset, and stays complete
/// until it is reset.
pub struct Delay {
    sleep: Pin<Box<Sleep>>,
    /// On [`own_runtime`], whose clock `reset` must read.
    own: bool,
}

static ON_CURRENT_THREAD: AtomicBool = AtomicBool::new(false);

/// From now on, a `Delay` created on a current-thread runtime registers with that runtime (by
/// default it goes to a runtime of its own, because a current-thread runtime drives timers only
/// while something blocks on it). For a process whose work all runs on one current-thread runtime,
/// such as simnet in virtual time: a paused clock moves only that runtime's timers.
pub fn timers_on_current_thread_runtimes() {
    ON_CURRENT_THREAD.store(true, Ordering::Relaxed);
}

impl Delay {
    /// A delay that fires `dur` from now. Durations too long to represent mean "never" in
    /// practice (about 30 years), as tokio's `sleep` does.
    pub fn new(dur: Duration) -> Delay {
        let (sleep, own) = match Handle::try_current() {
            // A current-thread runtime only drives timers while something blocks on it; a delay
            // created on it but polled elsewhere could then never fire. Multi-thread runtimes
            // always drive theirs.
            Ok(handle)
                if handle.runtime_flavor() != RuntimeFlavor::CurrentThread
                    || ON_CURRENT_THREAD.load(Ordering::Relaxed) =>
            {
                (tokio::time::sleep(dur), false)
            }
            _ => {
                let _guard = own_runtime().enter();
                (tokio::time::sleep(dur), true)
            }
        };
        Delay {
            sleep: Box::pin(sleep),
            own,
        }
    }

    /// Sets the delay to fire `dur` from now, whether or not it already fired. "Now" is read on
    /// the clock of the runtime the delay is registered with, which is not always the caller's.
    pub fn reset(&mut self, dur: Duration) {
        let now = match self.own {
            true => {
                let _guard = own_runtime().enter();
                Instant::now()
            }
            false => Instant::now(),
        };
        let deadline = now.checked_add(dur).unwrap_or_else(|| far_future(now));
        self.sleep.as_mut().reset(deadline);
    }
}

/// What `tokio::time::sleep` uses for a deadline that does not fit in an `Instant`.
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365 * 30)
}

/// The runtime of delays created outside a multi-thread tokio runtime: one thread, timers only.
fn own_runtime() -> &'static Handle {
    static OWN: OnceLock<Handle> = OnceLock::new();
    OWN.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime with only a timer builds");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("spawning the timer thread");
        handle
    })
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Instant as StdInstant};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fires_after_its_duration_and_again_after_a_reset() {
        let start = StdInstant::now();
        let mut d = Delay::new(Duration::from_millis(50));
        (&mut d).await;
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Complete: polling again is ready at once.
        (&mut d).await;
        d.reset(Duration::from_millis(30));
        let again = StdInstant::now();
        d.await;
        assert!(again.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn works_without_a_runtime() {
        let start = StdInstant::now();
        fires_within(Delay::new(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_delay_made_on_a_current_thread_runtime_fires_while_that_runtime_is_blocked() {
        fires_within(Delay::new(Duration::from_millis(20)));
    }

    /// A delay on the timer thread's runtime, reset from a runtime whose clock is paused (and
    /// behind the system's), still waits its full duration: `reset` reads the delay's clock.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_reset_reads_the_clock_of_the_delays_runtime_not_the_callers() {
        std::thread::sleep(Duration::from_millis(300));
        let mut d = Delay::new(Duration::from_secs(3600));
        let start = StdInstant::now();
        d.reset(Duration::from_millis(100));
        fires_within(d);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_duration_too_long_for_an_instant_does_not_panic() {
        let mut d = Delay::new(Duration::MAX);
        d.reset(Duration::MAX);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut d).poll(&mut cx).is_pending());
    }

    /// Polls `delay` on a plain thread (no runtime there) and fails unless it fires within 10 s.
    fn fires_within(delay: Delay) {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
            let mut cx = Context::from_waker(&waker);
            let mut delay = std::pin::pin!(delay);
            while delay.as_mut().poll(&mut cx).is_pending() {
                std::thread::park();
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the delay fired");
    }
}
