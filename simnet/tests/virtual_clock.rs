//! The virtual clock (`clock = "virtual"`, `simnet run --clock virtual`): `quickstart` run in
//! this process on `simnet::runtime(Clock::Virtual)`, then by the `simnet` binary with another
//! program spinning on a core. Both runs report simulated time and agree within the busy-host
//! tolerance: a busy host makes a virtual-clock run slower, not different. A test binary of its
//! own, because the virtual clock switches simnet/timer for the whole process.

use std::process::{Child, Command};

use simnet::{Report, Scenario, scenario::Clock, scenario::shipped_dir};

/// A program that keeps one core busy until it is killed.
struct Hog(Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a virtual-clock quickstart must show, quiet or busy.
fn check(r: &Report) {
    assert_eq!(r.clock, Clock::Virtual);
    assert!(
        r.host.is_none(),
        "no busy-host verdict under the virtual clock: {:?}",
        r.host
    );
    // Warm-up (3 s) and workload (30 s) at least, whatever the wall time was.
    let simulated = r.simulated_secs.expect("simulated time reported");
    assert!(simulated >= 33.0, "{simulated} s simulated");
    assert_eq!(r.lookups.attempted, 100);
    assert_eq!(r.lookups.success_rate, 1.0, "{:?}", r.lookups);
    assert_eq!(r.messages.sent, 100);
    assert_eq!(r.messages.delivery_rate, 1.0, "{:?}", r.messages);
    assert_eq!(r.messages.duplicates, 0);
    // The links' 20 ± 5 ms are simulated time too: no lookup beats one round trip (2 × 15 ms),
    // though the nodes' CPU work takes no simulated time at all.
    assert!(
        r.lookups.latency_ms.min >= Some(30.0),
        "{:?}",
        r.lookups.latency_ms
    );
}

#[test]
fn a_virtual_clock_run_on_a_busy_host_agrees_with_a_quiet_one() {
    let mut s = Scenario::load(&shipped_dir().join("quickstart.toml")).unwrap();
    s.clock = Clock::Virtual;
    let rt = simnet::runtime(Clock::Virtual).unwrap();
    let quiet = rt
        .block_on(simnet::run(&s, None, None, &|_: &str, _: u64, _: u64| {}))
        .unwrap()
        .report;
    println!("quiet, in this process:\n{}", quiet.summary());
    check(&quiet);
    assert!(
        quiet.summary().contains("virtual clock: "),
        "{}",
        quiet.summary()
    );

    let dir = tempfile::tempdir().unwrap();
    let run = {
        let _hog = Hog(Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs"));
        Command::new(env!("CARGO_BIN_EXE_simnet"))
            .args(["run", "--clock", "virtual", "--out"])
            .arg(dir.path())
            .arg(shipped_dir().join("quickstart.toml"))
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("busy, `simnet run --clock virtual`:\n{stdout}");
    assert!(stdout.contains("virtual clock: "), "{stdout}");
    let busy: Report =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    check(&busy);
    let differ = simnet::host::disagreements(&quiet, &busy);
    assert!(differ.is_empty(), "{differ:?}");
}

/// Runs `simnet run <args> <scenario>`, which must fail; its standard error.
fn refused(args: &[&str], scenario: &str) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_simnet"))
        .arg("run")
        .args(args)
        .arg(shipped_dir().join(scenario))
        .output()
        .unwrap();
    assert!(!run.status.success());
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn the_virtual_clock_is_refused_where_it_cannot_hold() {
    let netns = refused(&["--clock", "virtual"], "nat-matrix.toml");
    assert!(netns.contains("inproc\" only"), "{netns}");
    let split = refused(
        &["--clock", "virtual", "--processes", "2"],
        "quickstart.toml",
    );
    assert!(split.contains("real clock"), "{split}");
}
