//! NAT lab helpers: the routers of `netlab` (simnet/lab, shared with simnet's netns mode) with the
//! real `commucat` binary running on each device, driven through its CLI inside the device's
//! namespace.
//!
//! A test binary using this module must enter patchbay's user namespace from an ELF constructor
//! (see [`enter_userns`]) and call [`lab_available`] first.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use netlab::Nat;
use patchbay::{Device, Lab, Router};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_commucat");

/// Why the NAT lab cannot run here, if it cannot (set by [`enter_userns`]).
static UNAVAILABLE: OnceLock<Option<String>> = OnceLock::new();

/// Enters patchbay's user namespace. Call from a `#[ctor::ctor]` function, while the process
/// is still single-threaded. A missing prerequisite is remembered, not fatal: [`lab_available`]
/// reports it.
pub fn enter_userns() {
    // SAFETY: called from an ELF constructor, before any other thread exists.
    unsafe { netlab::enter_userns() };
    let _ = UNAVAILABLE.set(netlab::unavailable());
}

/// Whether NAT lab tests can run. When they cannot, says so on stderr and returns false; under
/// `CI=true` a missing prerequisite fails the test instead.
pub fn lab_available(test: &str) -> bool {
    let why = UNAVAILABLE
        .get()
        .cloned()
        .unwrap_or_else(|| Some("the user namespace was not entered".into()));
    match why {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: NAT lab unavailable under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Which transports the nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transports {
    Tcp,
    Quic,
    Both,
}

impl Transports {
    fn listen(self, port: u16) -> Vec<String> {
        let mut v = Vec::new();
        if self != Transports::Quic {
            v.push(format!("/ip4/0.0.0.0/tcp/{port}"));
        }
        if self != Transports::Tcp {
            v.push(format!("/ip4/0.0.0.0/udp/{port}/quic-v1"));
        }
        v
    }
}

pub const LAB_WAIT: Duration = Duration::from_secs(90);

/// Environment for every lab node: the lab's own settings ([`netlab::NODE_SETTINGS`]) and debug
/// logs of the traversal.
fn lab_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = netlab::NODE_SETTINGS
        .iter()
        .map(|(k, v)| (commucat::config::env_var(k), (*v).to_owned()))
        .collect();
    env.push((
        "RUST_LOG".into(),
        "info,commucat=debug,libp2p_dcutr=debug,libp2p_relay=debug".into(),
    ));
    env
}

pub async fn new_lab() -> Lab {
    Lab::new().await.expect("create the NAT lab")
}

/// A lab router of type `nat` (see [`netlab::router`]).
pub async fn router(lab: &Lab, name: &str, nat: Nat) -> Router {
    netlab::router(lab, name, nat)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub async fn device(lab: &Lab, name: &str, router: &Router) -> Device {
    lab.add_device(name)
        .iface("eth0", router.id())
        .build()
        .await
        .expect("device")
}

/// A `commucat run` process on a lab device. Killed on drop (its log is printed if the test
/// failed).
pub struct LabNode {
    pub name: String,
    pub dev: Device,
    pub dir: PathBuf,
    pub peer_id: String,
    pub ip: std::net::Ipv4Addr,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl LabNode {
    /// Starts a node on `dev` listening on [`netlab::PORT`] (`transports`), with `extra` flags.
    pub fn start(
        dev: &Device,
        root: &Path,
        name: &str,
        transports: Transports,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .arg("init")
            .output()
            .expect("commucat init");
        assert!(out.status.success());
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mut args = vec!["--control-listen".to_owned(), "127.0.0.1:0".to_owned()];
        for l in transports.listen(netlab::PORT) {
            args.push("--listen".into());
            args.push(l);
        }
        args.extend(extra.iter().cloned());
        let mut node = Self {
            name: name.to_owned(),
            dev: dev.clone(),
            dir: dir.clone(),
            peer_id,
            ip: dev.ip().expect("the device has an IPv4 address"),
            child: None,
            log: root.join(format!("{name}.log")),
            args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        node.spawn();
        node
    }

    /// (Re)starts the process with the same flags and data directory.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("control.addr"));
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .arg("run")
            .args(&self.args)
            .envs(lab_env())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            );
        let child = self
            .dev
            .spawn_command_sync(cmd)
            .expect("spawn commucat run in the namespace");
        self.child = Some(child);
        let addr_file = self.dir.join("control.addr");
        let deadline = Instant::now() + LAB_WAIT;
        while !addr_file.exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited early ({status}):\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not start", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/ip4/<ip>/<transport>/4001/p2p/<id>` for `--bootstrap`.
    pub fn addr(&self, transport: Transports) -> String {
        match transport {
            Transports::Quic => format!(
                "/ip4/{}/udp/{}/quic-v1/p2p/{}",
                self.ip,
                netlab::PORT,
                self.peer_id
            ),
            _ => format!("/ip4/{}/tcp/{}/p2p/{}", self.ip, netlab::PORT, self.peer_id),
        }
    }

    /// Runs a CLI verb inside the device's namespace (where the control API listens).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .dev
            .spawn_command_sync(cmd)
            .expect("spawn the CLI in the namespace");
        // Drain the pipes on threads so a large output cannot block the child.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
        });
        let err = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut v).map(|_| v)
        });
        let deadline = Instant::now() + LAB_WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{}: commucat {args:?} did not finish within {LAB_WAIT:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: out.join().unwrap().unwrap(),
            stderr: err.join().unwrap().unwrap(),
        }
    }

    /// A CLI verb with `--json`, parsed; panics on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full);
        assert!(
            out.status.success(),
            "{}: commucat {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// This node's connections to `peer`, as `commucat peers --json` lists them.
    pub fn connections(&self, peer: &str) -> Vec<Value> {
        self.json(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["peer_id"] == peer)
            .flat_map(|p| p["connections"].as_array().unwrap().clone())
            .collect()
    }

    /// The `relayed` flags of this node's connections to `peer`.
    pub fn connections_to(&self, peer: &str) -> Vec<bool> {
        self.connections(peer)
            .iter()
            .map(|c| c["relayed"].as_bool().unwrap())
            .collect()
    }

    /// A counter from `GET /v1/metrics` (0 when absent).
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let addr = std::fs::read_to_string(self.dir.join("control.addr")).unwrap();
        let token = std::fs::read_to_string(self.dir.join("control.token")).unwrap();
        let (addr, token) = (addr.trim().to_owned(), token.trim().to_owned());
        // A plain HTTP/1.0 request from a thread inside the namespace.
        let text = self
            .dev
            .spawn_thread(move || {
                use std::io::{Read, Write};
                let mut conn = std::net::TcpStream::connect(&addr)?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(
                    conn,
                    "GET /v1/metrics HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
                )?;
                let mut text = String::new();
                conn.read_to_string(&mut text)?;
                anyhow::Ok(text)
            })
            .expect("spawn a thread in the namespace")
            .join()
            .expect("metrics thread")
            .expect("GET /v1/metrics");
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until this node holds an accepted relay reservation.
    pub fn wait_reserved(&self) {
        wait(
            &format!("{} to hold a relay reservation", self.name),
            || {
                let s = self.status();
                s["relay_reservations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| !r["address"].is_null())
            },
        );
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// Polls `check` every 200 ms until true; fails after [`LAB_WAIT`].
pub fn wait(what: &str, mut check: impl FnMut() -> bool) {
    eprintln!("[lab] waiting for {what}");
    let deadline = Instant::now() + LAB_WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bootstrap/relay flags for a server at `ip`: role, and its public addresses as external.
pub fn relay_flags(ip: std::net::Ipv4Addr, transports: Transports) -> Vec<String> {
    let mut v = vec!["--role".to_owned(), "bootstrap".to_owned()];
    for l in transports.listen(netlab::PORT) {
        v.push("--external".into());
        v.push(l.replace("0.0.0.0", &ip.to_string()));
    }
    v
}

/// Writes `size` bytes of deterministic, incompressible-looking content; returns its SHA-256.
pub fn make_file(path: &Path, size: usize) -> String {
    use sha2::Digest;
    let content: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(path, &content).unwrap();
    hex::encode(sha2::Sha256::digest(&content))
}
