//! The busy-host guard (`simnet::host`): a scenario run twice with the same seed, the second time
//! with another program spinning on a core, gives reports that agree within the stated tolerance,
//! or the loaded run says it is invalid and why.

use std::process::{Child, Command};

use simnet::{Scenario, scenario::shipped_dir};

/// A program that keeps one core busy until it is killed.
struct Hog(Child);

impl Hog {
    fn start() -> Self {
        Self(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("sh runs"),
        )
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(s: &Scenario) -> simnet::Report {
    let outcome = simnet::run(s, None, None, &|_: &str, _: u64, _: u64| {})
        .await
        .unwrap();
    println!("{}", outcome.report.summary());
    outcome.report
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_on_a_busy_host_agrees_with_a_quiet_one_or_says_it_is_invalid() {
    let mut s = Scenario::load(&shipped_dir().join("quickstart.toml")).unwrap();
    // Starting a node is CPU work (its keys, its store): in a debug build 16 nodes starting at
    // once keep both cores busy for a second or two. Spread over 15 s they do not.
    s.join_secs = 15;
    let quiet = run(&s).await;
    let host = quiet.host.as_ref().expect("inproc reports the host");
    assert!(
        host.valid,
        "20 nodes must not overload this machine: {host:?}"
    );
    assert!(host.measured_lag_ms.count > 100, "{host:?}");
    assert_eq!(quiet.security, Some(simnet::link::Security::Plaintext));

    let busy = {
        let _hog = Hog::start();
        run(&s).await
    };
    let host = busy.host.as_ref().expect("inproc reports the host");
    let differ = simnet::host::disagreements(&quiet, &busy);
    if host.valid {
        assert!(
            differ.is_empty(),
            "a run called valid must agree with the quiet one: {differ:?}"
        );
    } else {
        let why = host.invalid_because.as_deref().unwrap_or_default();
        assert!(why.contains("too busy"), "{why}");
        let json = serde_json::to_value(&busy).unwrap();
        assert_eq!(json["host"]["valid"], false);
        assert!(busy.summary().contains("INVALID"), "{}", busy.summary());
    }
}
