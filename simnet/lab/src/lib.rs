//! The NAT lab: network namespaces joined by routers that do real NAT (nftables), built with
//! patchbay. The NAT tests (`tests/nat.rs`, `commucat` processes on lab devices) and simnet's
//! netns mode (library nodes on lab devices) build their labs from this crate, so both test the
//! same routers.
//!
//! Facts the lab rests on:
//!
//! - Every router is IPv4 only, so that nobody sidesteps a NAT over IPv6.
//! - A router behind which nodes sit drops new connections to its own WAN address
//!   ([`drop_unsolicited`]), as home routers do, instead of answering them with a TCP reset or an
//!   ICMP error; otherwise the first SYN of a TCP hole punch is refused before the other side's
//!   arrives, and punching through a router that does fail.
//! - The lab's addresses (198.18.0.0/15) are not global: lab nodes run AutoNAT on all addresses
//!   and probe quickly ([`NODE_SETTINGS`]).
//! - Which path two NAT types allow is [`expected`]: direct when either side is open or public,
//!   or when both map endpoint-independently; relayed otherwise.
//! - The kernel here has no netem: latency and loss are modelled in-process (simnet's `link`),
//!   never in the lab.
//!
//! patchbay enters a user namespace ([`enter_userns`]) which must happen while the process has a
//! single thread: from an ELF constructor.

use std::{io::Write, path::Path};

use anyhow::Context;
use patchbay::{IpSupport, Lab, Router, RouterPreset};
use serde::{Deserialize, Serialize};

/// The router a node sits behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nat {
    /// A public address, no NAT (bootstrap/relay servers).
    Public,
    /// Full cone: endpoint-independent mapping and filtering, no firewall.
    Open,
    /// A home router: endpoint-independent mapping, address-and-port-dependent filtering.
    Moderate,
    /// Symmetric: a new mapping (port) per destination.
    Strict,
    /// Carrier-grade NAT (patchbay's `IspCgnat` preset, endpoint-independent mapping).
    Cgnat,
}

impl Nat {
    pub fn label(self) -> &'static str {
        match self {
            Nat::Public => "public",
            Nat::Open => "open",
            Nat::Moderate => "moderate",
            Nat::Strict => "strict",
            Nat::Cgnat => "cgnat",
        }
    }
}

/// The path a connection between nodes behind `a` and `b` can take, once hole punching is done.
pub fn expected(a: Nat, b: Nat) -> &'static str {
    let open = |n: Nat| matches!(n, Nat::Public | Nat::Open);
    let eim = |n: Nat| matches!(n, Nat::Moderate | Nat::Cgnat);
    if open(a) || open(b) || (eim(a) && eim(b)) {
        "direct"
    } else {
        "relayed"
    }
}

/// Configuration keys (`config/default.toml` names) every lab node runs with, and why: the lab's
/// addresses are not global, so AutoNAT must consider them and probe quickly; deliveries retry
/// quickly; mDNS would find every lab node through the host.
pub const NODE_SETTINGS: &[(&str, &str)] = &[
    ("autonat.only_global_ips", "false"),
    ("autonat.probe_interval_secs", "1"),
    ("autonat.recheck_secs", "5"),
    ("data.max_retry_secs", "2"),
    ("mdns.enabled", "false"),
];

/// Port every lab node listens on (TCP and QUIC).
pub const PORT: u16 = 4001;

/// Why the lab cannot run on this machine, if it cannot.
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".into());
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !nft {
        return Some(
            "nftables is not installed (no `nft`; Debian: apt-get install -y nftables iproute2 conntrack)"
                .into(),
        );
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("this kernel has no network namespaces".into());
    }
    None
}

/// Enters patchbay's user namespace, if the lab can run here ([`unavailable`]).
///
/// # Safety
///
/// Only from an ELF constructor (`#[ctor::ctor]`), while the process has a single thread.
pub unsafe fn enter_userns() {
    if unavailable().is_none() {
        // SAFETY: the caller guarantees a single-threaded process.
        unsafe { patchbay::init_userns_for_ctor() };
    }
}

/// A router of type `nat` named `name`, IPv4 only; any but a public one drops unsolicited
/// connections to its WAN address.
pub async fn router(lab: &Lab, name: &str, nat: Nat) -> anyhow::Result<Router> {
    let b = lab.add_router(name);
    let b = match nat {
        Nat::Public => b.preset(RouterPreset::PublicV4),
        Nat::Open => b.nat(patchbay::Nat::Open),
        Nat::Moderate => b.preset(RouterPreset::Home).nat(patchbay::Nat::Moderate),
        Nat::Strict => b.preset(RouterPreset::Home).nat(patchbay::Nat::Strict),
        Nat::Cgnat => b.preset(RouterPreset::IspCgnat),
    };
    let router = b
        .ip_support(IpSupport::V4Only)
        .build()
        .await
        .with_context(|| format!("build the {} router {name}", nat.label()))?;
    if nat != Nat::Public {
        drop_unsolicited(&router)?;
    }
    Ok(router)
}

/// Has `router` drop new connections to its own WAN address instead of answering them with a
/// reset or an ICMP error (see the crate docs).
pub fn drop_unsolicited(router: &Router) -> anyhow::Result<()> {
    let wan = router
        .uplink_ip()
        .context("the router has no uplink address")?;
    let rules = format!(
        "table inet lab_wan {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {wan} meta l4proto {{ tcp, udp }} ct state new drop\n }}\n}}\n"
    );
    let mut cmd = std::process::Command::new("nft");
    cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = router
        .spawn_command_sync(cmd)
        .context("run nft on the router")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "nft refused the WAN rules");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_mapping_rule() {
        use Nat::*;
        assert_eq!(expected(Strict, Public), "direct");
        assert_eq!(expected(Open, Strict), "direct");
        assert_eq!(expected(Moderate, Cgnat), "direct");
        assert_eq!(expected(Moderate, Strict), "relayed");
        assert_eq!(expected(Strict, Strict), "relayed");
        assert_eq!(expected(Cgnat, Strict), "relayed");
    }
}
