//! Helpers for integration tests: run the real `commucat` binary on 127.0.0.1 with its own data
//! directory, talk to it through the CLI or the control API, wait on conditions with timeouts.
#![allow(dead_code)] // each test binary uses a different subset

pub mod inproc;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_commucat");
/// How long a test waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(60);
/// Listen flags for a node on loopback with OS-chosen ports.
pub const LOOPBACK: &[&str] = &[
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
    "--control-listen",
    "127.0.0.1:0",
];

/// A bootstrap peer nobody listens on: keeps a test node off the built-in (public) list.
pub const NO_BOOTSTRAP: &str =
    "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

/// Starts a node on loopback in assist mode (API and STUN on free ports), with no bootstrap
/// peers, the `extra` flags and the `env` variables.
pub fn start_assist(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
    let mut args: Vec<&str> = LOOPBACK.to_vec();
    args.extend_from_slice(&[
        "--assist",
        "--assist-listen",
        "127.0.0.1:0",
        "--stun-listen",
        "127.0.0.1:0",
    ]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--bootstrap", NO_BOOTSTRAP]);
    NodeProc::start_env(dir, &args, env)
}

/// The assist API's base URL (`http://addr`) from `assist.addr`.
pub fn assist_url(node: &NodeProc) -> String {
    let addr = std::fs::read_to_string(node.dir.join("assist.addr")).unwrap();
    format!("http://{}", addr.trim())
}

/// `npm ci` in `dir`; `Err(reason)` when Node.js or npm is missing or the install fails.
pub fn npm_ci(dir: &Path) -> Result<(), String> {
    for tool in ["node", "npm"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(format!(
                "`{tool}` is not installed (Debian: apt-get install nodejs npm)"
            ));
        }
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The strings in a JSON array (empty when `v` is not an array).
pub fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Runs a CLI verb against `data_dir` and returns its output.
pub fn cli(data_dir: &Path, args: &[&str]) -> Output {
    cli_env(data_dir, args, &[])
}

pub fn cli_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run commucat")
}

/// Runs a CLI verb, asserts success, returns what it printed on stdout.
pub fn cli_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = cli(data_dir, args);
    assert!(
        out.status.success(),
        "commucat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a CLI verb with `--json`, asserts success, parses stdout.
pub fn cli_json(data_dir: &Path, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let out = cli(data_dir, &full);
    assert!(
        out.status.success(),
        "commucat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// Waits until the inbox of the node at `dir` holds a message with `body`; that message.
pub fn wait_inbox(dir: &Path, body: &str) -> Value {
    wait_for(
        &format!("{} to receive {body:?}", dir.display()),
        WAIT,
        || {
            let inbox = cli_json(dir, &["inbox"]);
            inbox
                .as_array()?
                .iter()
                .find(|m| m["body"] == body)
                .cloned()
        },
    )
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the async `check` every 50 ms until it holds, failing the test after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `commucat run` child process. Killed on drop; [`NodeProc::stop`] shuts it down cleanly.
pub struct NodeProc {
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProc {
    /// Starts `commucat --data-dir dir run <args>` with mDNS off (so that discovery in tests is
    /// the DHT's doing) and waits until its control API is up.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_env(dir, args, &[])
    }

    pub fn start_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .arg("run")
            .args(args)
            .env("COMMUCAT_MDNS__ENABLED", "false")
            .env("RUST_LOG", "info,commucat=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn commucat run");
        let mut node = Self {
            dir: dir.to_owned(),
            child: Some(child),
            log,
        };
        let addr_file = dir.join("control.addr");
        wait_for("the control API to come up", WAIT, || {
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("commucat run exited early ({status}):\n{}", node.log());
            }
            addr_file.exists().then_some(())
        });
        node
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        cli_json(&self.dir, &["status"])
    }

    pub fn peer_id(&self) -> String {
        self.status()["peer_id"].as_str().unwrap().to_owned()
    }

    /// The node's TCP listen address with `/p2p/<id>`, for `--bootstrap`.
    pub fn tcp_addr(&self) -> String {
        let status = self.status();
        let tcp = strs(&status["listen_addrs"])
            .into_iter()
            .find(|a| a.contains("/tcp/"))
            .expect("a TCP listen address")
            .to_owned();
        format!("{tcp}/p2p/{}", status["peer_id"].as_str().unwrap())
    }

    /// Peer ids this node is connected to.
    pub fn connected_to(&self) -> Vec<String> {
        cli_json(&self.dir, &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until AutoNAT has confirmed this node's address and it serves the DHT.
    pub fn wait_serving_dht(&self) {
        wait_for(
            "the node to confirm an external address and serve the DHT",
            WAIT,
            || {
                let s = self.status();
                (s["reachability"] == "public" && s["kad_mode"] == "server").then_some(())
            },
        );
    }

    /// Waits until this node is connected to `peer` and knows, through identify, that it serves
    /// the DHT (so it is in the routing table).
    pub fn wait_sees_dht_server(&self, peer: &str) {
        wait_for("a peer to be seen as a DHT server", WAIT, || {
            let peers = cli_json(&self.dir, &["peers"]);
            peers
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    p["peer_id"] == peer
                        && p["protocols"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x == "/commucat/kad/1.0.0")
                })
                .then_some(())
        });
    }

    pub fn control(&self) -> (String, String) {
        let addr = std::fs::read_to_string(self.dir.join("control.addr")).unwrap();
        let token = std::fs::read_to_string(self.dir.join("control.token")).unwrap();
        (format!("http://{}", addr.trim()), token.trim().to_owned())
    }

    /// SIGKILL: the process gets no chance to clean up (a crash, a power cut).
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The listen addresses as `--listen` flags with the control API on a free port, to restart
    /// a node on the same ports.
    pub fn same_ports(&self) -> Vec<String> {
        let mut args = vec!["--control-listen".to_owned(), "127.0.0.1:0".to_owned()];
        for a in strs(&self.status()["listen_addrs"]) {
            args.push("--listen".into());
            args.push(a.to_owned());
        }
        args
    }

    /// GET on the control API, parsed.
    pub async fn api_get(&self, path: &str) -> Value {
        let (base, token) = self.control();
        reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POST on the control API, parsed.
    pub async fn api_post(&self, path: &str, body: &Value) -> Value {
        let (base, token) = self.control();
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: plain syscall on the pid of a child we own and have not reaped.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM delivered"
        );
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("commucat did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- log of {} ---\n{}", self.dir.display(), self.log());
            }
        }
    }
}
