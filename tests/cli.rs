//! The command line and the control API as a user meets them: config layering, error messages,
//! and the bearer token on every route.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{LOOPBACK, NodeProc, cli, cli_env};
use reqwest::{Method, StatusCode};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn effective(out: std::process::Output) -> toml::Table {
    assert!(out.status.success(), "config show failed: {}", stderr(&out));
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("config show prints TOML")
}

#[test]
fn config_layers_defaults_file_env_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("node.toml");
    std::fs::write(
        &file,
        "role = \"bootstrap\"\n[kad]\nmode = \"client\"\nquery_timeout_secs = 11\n[network]\nmax_connections = 7\ntrim_connections_above = 6\ntrim_connections_to = 4\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Defaults, where nothing else speaks.
    let d = effective(cli(tmp.path(), &["config", "show"]));
    assert_eq!(d["role"].as_str(), Some("desktop"));
    assert_eq!(d["control"]["listen"].as_str(), Some("127.0.0.1:5731"));
    assert_eq!(d["network"]["listen"].as_array().unwrap().len(), 4);

    // File beats defaults.
    let c = effective(cli(tmp.path(), &["config", "show", "--config", f]));
    assert_eq!(c["kad"]["mode"].as_str(), Some("client"));
    assert_eq!(c["kad"]["query_timeout_secs"].as_integer(), Some(11));
    assert_eq!(c["role"].as_str(), Some("bootstrap"));

    // Environment beats file; keys the environment does not set keep the file's value.
    let env = [
        ("COMMUCAT_KAD__MODE", "server"),
        ("COMMUCAT_ROLE", "desktop"),
        ("COMMUCAT_NETWORK__LISTEN", "[\"/ip4/10.0.0.1/tcp/9\"]"),
    ];
    let c = effective(cli_env(
        tmp.path(),
        &["config", "show", "--config", f],
        &env,
    ));
    assert_eq!(c["kad"]["mode"].as_str(), Some("server"));
    assert_eq!(c["kad"]["query_timeout_secs"].as_integer(), Some(11));
    assert_eq!(c["role"].as_str(), Some("desktop"));
    assert_eq!(c["network"]["max_connections"].as_integer(), Some(7));

    // Flags beat the environment.
    let c = effective(cli_env(
        tmp.path(),
        &[
            "config",
            "show",
            "--config",
            f,
            "--role",
            "bootstrap",
            "--listen",
            "/ip4/10.0.0.2/udp/9/quic-v1",
        ],
        &env,
    ));
    assert_eq!(c["role"].as_str(), Some("bootstrap"));
    let listen = c["network"]["listen"].as_array().unwrap();
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0].as_str(), Some("/ip4/10.0.0.2/udp/9/quic-v1"));
}

#[test]
fn unknown_keys_are_named_with_their_source() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("typo.toml");
    std::fs::write(&file, "[network]\nmax_conections = 5\n").unwrap();
    for verb in [&["config", "show"][..], &["run"][..]] {
        let mut args = verb.to_vec();
        args.extend(["--config", file.to_str().unwrap()]);
        let out = cli(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{verb:?}");
        let err = stderr(&out);
        assert!(err.contains("network.max_conections"), "{err}");
        assert!(err.contains(file.to_str().unwrap()), "{err}");
    }

    let out = cli_env(
        tmp.path(),
        &["config", "show"],
        &[("COMMUCAT_KAD__MODEE", "server")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("kad.modee"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("COMMUCAT_KAD__MODEE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_names_bad_input_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");

    let out = cli(&dir, &["run", "--listen", "/ip4/300.1.1.1/tcp/1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/ip4/300.1.1.1/tcp/1"),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("missing.toml");
    let out = cli(&dir, &["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );

    // Unreadable even for root: a directory where a file should be.
    let out = cli(&dir, &["run", "--config", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read config file"),
        "{}",
        stderr(&out)
    );

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[network]\nlisten = [\"/ip4/1.2.3.4/tcp/nope\"]\n").unwrap();
    let out = cli(&dir, &["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("network.listen"), "{}", stderr(&out));

    let out = cli(&dir, &["run", "--bootstrap", "/ip4/127.0.0.1/tcp/4001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/p2p/"), "{}", stderr(&out));
    assert!(!dir.join("control.addr").exists(), "nothing was started");
}

#[test]
fn init_creates_a_private_identity_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let first = cli(&dir, &["init"]);
    assert!(first.status.success());
    let id = String::from_utf8(first.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "prints the PeerId: {id}");
    let mode = std::fs::metadata(dir.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let again = cli(&dir, &["init"]);
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        id,
        "keeps the identity"
    );
    assert!(stderr(&again).contains("already exists"));

    let out = cli(&tmp.path().join("empty"), &["id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("commucat init"), "{}", stderr(&out));
}

#[tokio::test]
async fn control_api_refuses_requests_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&tmp.path().join("n"), LOOPBACK);
    let (base, token) = node.control();
    let mode = std::fs::metadata(node.dir.join("control.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let routes = [
        (Method::GET, "/v1/id"),
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/peers"),
        (Method::GET, "/v1/events"),
        (Method::GET, "/v1/metrics"),
        (Method::POST, "/v1/dht/find-peer"),
        (Method::POST, "/v1/connect"),
        (Method::GET, "/v1/no-such-route"),
        (Method::DELETE, "/v1/status"),
    ];
    let http = reqwest::Client::new();
    let last = if token.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(wrong, token);
    for (method, path) in &routes {
        for auth in [None, Some(wrong.as_str()), Some("")] {
            let mut req = http
                .request(method.clone(), format!("{base}{path}"))
                .json(&serde_json::json!({}));
            if let Some(t) = auth {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["status"], 401);
        }
        // Basic auth carrying the token is not bearer auth.
        let resp = http
            .request(method.clone(), format!("{base}{path}"))
            .basic_auth("x", Some(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with basic auth"
        );
    }

    // With the token the same API answers.
    let status: serde_json::Value = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["peer_id"], node.peer_id().as_str());
    let resp = http
        .get(format!("{base}/v1/no-such-route"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = http
        .post(format!("{base}/v1/dht/find-peer"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"peer_id": "@a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = http
        .post(format!("{base}/v1/connect"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

/// A second node on the first node's TCP and QUIC ports refuses to start instead of sharing them.
#[test]
fn run_refuses_ports_held_by_another_node() {
    let tmp = tempfile::tempdir().unwrap();
    let first = NodeProc::start(&tmp.path().join("first"), LOOPBACK);
    let status = first.status();
    let mut args = vec![
        "run".to_string(),
        "--control-listen".into(),
        "127.0.0.1:0".into(),
    ];
    for addr in status["listen_addrs"].as_array().unwrap() {
        args.push("--listen".into());
        args.push(addr.as_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&tmp.path().join("second"), &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );
    assert!(
        first.status()["uptime_secs"].is_u64(),
        "the first node is unaffected"
    );
}

/// The device CA key is made once, private, and kept; a damaged one stops the node, which says
/// what to do, instead of silently making another (which would orphan every paired device).
#[test]
fn a_damaged_device_ca_key_stops_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let node = NodeProc::start(&dir, LOOPBACK);
    let key = dir.join("device-ca.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    node.stop();
    let node = NodeProc::start(&dir, LOOPBACK);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        first,
        "kept across restarts"
    );
    node.stop();

    std::fs::write(&key, "not a key\n").unwrap();
    let mut args = vec!["run"];
    args.extend_from_slice(LOOPBACK);
    let out = cli(&dir, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("device-ca.key is damaged") && err.contains("pair again"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        "not a key\n",
        "left as found"
    );
}
