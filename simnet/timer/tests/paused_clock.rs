//! `timers_on_current_thread_runtimes` (simnet's virtual time): delays register with the paused
//! current-thread runtime they are created on and fire in its virtual time. A process of its own
//! (an integration test), since the switch is process-wide.

use std::time::{Duration, Instant as StdInstant};

#[test]
fn an_hours_delay_fires_at_once_in_virtual_time_and_an_hour_of_it_has_passed() {
    futures_timer::timers_on_current_thread_runtimes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let wall = StdInstant::now();
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let mut d = futures_timer::Delay::new(Duration::from_secs(3600));
        (&mut d).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        d.reset(Duration::from_secs(60));
        d.await;
        assert_eq!(start.elapsed(), Duration::from_secs(3660));
    });
    assert!(
        wall.elapsed() < Duration::from_secs(60),
        "{:?}",
        wall.elapsed()
    );
}
