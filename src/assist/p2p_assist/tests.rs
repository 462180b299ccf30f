use super::*;

fn check(json: &str) -> Result<(), String> {
    let req: Request = serde_json::from_str(json).map_err(|e| e.to_string())?;
    validate(&req, 8)
        .map(drop)
        .map_err(|p| p.detail.unwrap_or_default())
}

#[test]
fn validation_names_the_field() {
    check("{}").unwrap();
    check(r#"{"paths":[{"address":"a.example","port":4001,"id":"x"}],"fec":{"mtu":1200,"repair_overhead":0.4},"min_paths":1}"#).unwrap();
    for (json, field) in [
        (r#"{"min_paths":0}"#, "min_paths"),
        (r#"{"min_paths":9}"#, "min_paths"),
        (r#"{"fec":{"mtu":100}}"#, "fec.mtu"),
        (r#"{"fec":{"mtu":70000}}"#, "fec.mtu"),
        (r#"{"fec":{"repair_overhead":1.5}}"#, "fec.repair_overhead"),
        (r#"{"fec":{"repair_overhead":-0.1}}"#, "fec.repair_overhead"),
        (r#"{"paths":[{"port":1}]}"#, "paths[0].address"),
        (r#"{"paths":[{"address":" "}]}"#, "paths[0].address"),
        (r#"{"paths":[{"address":"a","port":0}]}"#, "paths[0].port"),
        (
            r#"{"paths":[{"address":"a","id":"x"},{"address":"b","id":"x"}]}"#,
            "paths[1].id",
        ),
        (
            r#"{"paths":[{"address":"a","reality_fingerprint":"zz"}]}"#,
            "paths[0].reality_fingerprint",
        ),
        (r#"{"bogus":1}"#, "bogus"),
    ] {
        let err = check(json).unwrap_err();
        assert!(err.contains(field), "{json}: {err}");
    }
    let many = format!(r#"{{"paths":[{}]}}"#, [r#"{"address":"a"}"#; 9].join(","));
    assert!(check(&many).unwrap_err().contains("paths"));
    // No field may be null (the OpenAPI document allows none): null is not "left out".
    for json in [
        r#"{"fec":{"repair_overhead":null}}"#,
        r#"{"fec":{"mtu":null}}"#,
        r#"{"fec":null}"#,
        r#"{"min_paths":null}"#,
        r#"{"peer_hint":null}"#,
        r#"{"paths":[{"address":null}]}"#,
        r#"{"paths":[{"address":"a","port":null}]}"#,
    ] {
        let err = check(json).unwrap_err();
        assert!(err.contains("null"), "{json}: {err}");
    }
}

#[tokio::test]
async fn non_public_targets_are_refused_before_any_probe() {
    let path = |address: &str| Path {
        id: "p".into(),
        address: address.into(),
        port: 4001,
        priority: 0,
        ip: None,
    };
    for address in [
        "127.0.0.1",
        "10.0.0.1",
        "10.255.0.9",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "localhost",
    ] {
        let mut paths = vec![path(address)];
        let err = check_targets(&mut paths, false).await.unwrap_err();
        let detail = err.detail.unwrap_or_default();
        assert!(
            detail.contains("not a public address"),
            "{address}: {detail}"
        );
        assert!(paths[0].ip.is_none(), "{address}");
        // An operator may allow them; then the probe dials the checked address.
        let mut paths = vec![path(address)];
        check_targets(&mut paths, true).await.unwrap();
        assert!(paths[0].ip.is_some_and(|ip| !crate::net::is_public(ip)));
    }
    let mut paths = vec![path("1.1.1.1")];
    check_targets(&mut paths, false).await.unwrap();
    assert_eq!(
        probe_targets(&paths[0])[0].1.to_string(),
        "/ip4/1.1.1.1/tcp/4001"
    );
}

#[test]
fn tiers_follow_the_round_trip_time() {
    assert_eq!(latency_tier(Duration::from_millis(1)), "Low");
    assert_eq!(latency_tier(Duration::from_millis(120)), "Medium");
    assert_eq!(latency_tier(Duration::from_millis(400)), "High");
    assert_eq!(throughput_tier(Duration::from_millis(1)), "High");
    assert_eq!(throughput_tier(Duration::from_millis(500)), "Medium");
    assert_eq!(throughput_tier(Duration::from_secs(2)), "Low");
}
