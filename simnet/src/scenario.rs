//! Scenario files (`simnet/README.md` § Scenarios): TOML, every key checked, unknown keys refused.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Most nodes one scenario may start.
pub const MAX_NODES: usize = 10_000;
/// Most workload operations one scenario may schedule.
pub const MAX_OPERATIONS: usize = 1_000_000;
/// Longest workload phase, seconds.
pub const MAX_DURATION_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every node in this process, on the libp2p memory transport.
    Inproc,
    /// Nodes in network namespaces behind nftables NAT routers (patchbay), over real TCP and QUIC.
    Netns,
}

/// The clock a run's nodes read (a report's type too).
pub use crate::report::Clock;

/// The router a `netns` group sits behind (which paths two types allow: `netlab::expected`).
pub use netlab::Nat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// DHT server and relay; others bootstrap from these.
    Bootstrap,
    Desktop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub count: usize,
    pub role: Role,
    /// `netns` only: the router each node of the group sits behind (its own router per node).
    /// Default: `public` for bootstrap groups, `moderate` for others.
    #[serde(default)]
    pub nat: Option<Nat>,
    /// Node configuration overrides, merged into the defaults (`config/default.toml` keys, e.g.
    /// `[group.config.data] max_retry_secs = 5`).
    #[serde(default)]
    pub config: Option<toml::Table>,
}

impl Group {
    pub fn nat(&self) -> Nat {
        self.nat.unwrap_or(match self.role {
            Role::Bootstrap => Nat::Public,
            Role::Desktop => Nat::Moderate,
        })
    }
}

/// `[churn]`: nodes of `groups` leave (stop, keeping identity and store) at `leaves_per_min`
/// over the workload phase and come back after `down_secs`; each node leaves at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Groups whose nodes churn. Default: every desktop group.
    #[serde(default)]
    pub groups: Vec<String>,
    pub leaves_per_min: f64,
    /// Time offline, uniform in `[min, max]` seconds.
    pub down_secs: [u64; 2],
}

/// `[[outage]]`: `count` nodes of `group` (default: all) go offline together at `at_secs` into the
/// workload phase and return `for_secs` later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    pub group: String,
    #[serde(default)]
    pub count: Option<usize>,
    pub at_secs: u64,
    pub for_secs: u64,
}

/// `count` operations from random nodes of group `from` to random other nodes of group `to`,
/// spread uniformly over the workload phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub from: String,
    pub to: String,
    pub count: usize,
    /// Message body size (messages only). Default: 64.
    #[serde(default)]
    pub size_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub lookups: Vec<Flow>,
    #[serde(default)]
    pub messages: Vec<Flow>,
    /// File transfers (`size_bytes` default: 1 MiB).
    #[serde(default)]
    pub files: Vec<Flow>,
    /// Name resolutions (`protocols/names-v1.md`): every `to` node picked claims the handle
    /// `node-<index>` before the workload phase (the claims are waited for), then `from` nodes
    /// resolve them during it.
    #[serde(default)]
    pub names: Vec<Flow>,
    /// Groups (`protocols/groups-v1.md`, inproc mode): made before the workload phase, then sent
    /// to during it.
    #[serde(default)]
    pub groups: Vec<GroupFlow>,
}

/// `[[workload.groups]]`: `groups` groups of `members` nodes of node group `from` (their creators
/// add the others and wait until every member holds the log), each getting `messages_per_minute`
/// messages from random members during the phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFlow {
    pub from: String,
    pub groups: usize,
    pub members: usize,
    pub messages_per_minute: f64,
    /// Message body size. Default: 64.
    #[serde(default)]
    pub size_bytes: Option<usize>,
}

/// Largest simulated file.
pub const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_FILE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub mode: Mode,
    /// Seed of the topology and the workload (`--seed` overrides it).
    pub seed: u64,
    /// Length of the workload phase.
    pub duration_secs: u64,
    /// Seconds over which the non-bootstrap nodes join, evenly spaced (`inproc`): a network that
    /// grows at a pace the machine keeps up with, instead of every node bootstrapping at once.
    /// Default: 0 (as fast as they start).
    #[serde(default)]
    pub join_secs: u64,
    /// Pause between the last node starting and the workload. Default: 5.
    #[serde(default = "default_warmup")]
    pub warmup_secs: u64,
    /// Seconds after the workload phase that deliveries may still take. Default: 30.
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
    /// Link model (`inproc` only). Default: no delay, no loss, no bandwidth limit.
    #[serde(default)]
    pub link: Option<crate::link::Link>,
    /// inproc: how simulated connections are secured (`link::Security`; default plaintext).
    #[serde(default)]
    pub security: Option<crate::link::Security>,
    /// `"real"` (default) or `"virtual"` (inproc in one process; `simnet run --clock` overrides).
    #[serde(default)]
    pub clock: Clock,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default, rename = "outage")]
    pub outages: Vec<Outage>,
    #[serde(default)]
    pub workload: Workload,
}

fn default_warmup() -> u64 {
    5
}

fn default_drain() -> u64 {
    30
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn nodes(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.groups.is_empty() {
            bail!("a scenario needs at least one [[group]]");
        }
        let mut seen = std::collections::HashSet::new();
        for g in &self.groups {
            if !seen.insert(g.name.as_str()) {
                bail!("group {:?} is defined twice", g.name);
            }
            if g.count == 0 {
                bail!("group {:?} has count 0", g.name);
            }
        }
        if self.nodes() > MAX_NODES {
            bail!("{} nodes: at most {MAX_NODES}", self.nodes());
        }
        if !self.groups.iter().any(|g| g.role == Role::Bootstrap) {
            bail!("a scenario needs a group with role = \"bootstrap\"");
        }
        if self.duration_secs == 0 || self.duration_secs > MAX_DURATION_SECS {
            bail!("duration_secs must be 1..={MAX_DURATION_SECS}");
        }
        if self.join_secs > MAX_DURATION_SECS {
            bail!("join_secs must be 0..={MAX_DURATION_SECS}");
        }
        if self.clock == Clock::Virtual && self.mode != Mode::Inproc {
            bail!(
                "clock = \"virtual\" applies to mode = \"inproc\" only (netns nodes use the kernel's sockets and timers)"
            );
        }
        if let Some(link) = &self.link {
            link.validate()?;
            if self.mode != Mode::Inproc {
                bail!("[link] applies to mode = \"inproc\" only (netns links are real veth pairs)");
            }
        }
        for g in &self.groups {
            if self.mode == Mode::Inproc && g.nat.is_some() {
                bail!("group {:?}: `nat` applies to mode = \"netns\" only", g.name);
            }
            if g.role == Role::Bootstrap && g.nat() != Nat::Public {
                bail!("group {:?}: bootstrap nodes need nat = \"public\"", g.name);
            }
            if let Some(c) = &g.config {
                crate::overrides::apply(commucat::config::Config::default(), c)
                    .with_context(|| format!("group {:?}: config overrides", g.name))?;
            }
        }
        self.validate_churn()?;
        self.validate_workload()
    }

    /// Churn and outages name existing non-bootstrap groups and fit in the run.
    fn validate_churn(&self) -> anyhow::Result<()> {
        if let Some(c) = &self.churn {
            for name in &c.groups {
                match self.group(name) {
                    None => bail!("churn names group {name:?}, which is not defined"),
                    Some(g) if g.role == Role::Bootstrap => {
                        bail!("churn: group {name:?} holds bootstrap nodes, which do not churn")
                    }
                    _ => {}
                }
            }
            if !(c.leaves_per_min.is_finite() && c.leaves_per_min >= 0.0) {
                bail!("churn.leaves_per_min must be at least 0");
            }
            if c.down_secs[0] > c.down_secs[1] || c.down_secs[1] >= self.duration_secs {
                bail!("churn.down_secs = [min, max] with min <= max < duration_secs");
            }
        }
        for o in &self.outages {
            let Some(g) = self.group(&o.group) else {
                bail!("outage names group {:?}, which is not defined", o.group);
            };
            if g.role == Role::Bootstrap {
                bail!("outage: group {:?} holds bootstrap nodes", o.group);
            }
            if o.count.unwrap_or(g.count) > g.count {
                bail!("outage: group {:?} has only {} nodes", o.group, g.count);
            }
            if o.for_secs == 0 || o.at_secs + o.for_secs >= self.duration_secs {
                bail!("outage: 0 < for_secs and at_secs + for_secs < duration_secs");
            }
        }
        if self.mode == Mode::Netns && (self.churn.is_some() || !self.outages.is_empty()) {
            bail!("churn and outages are simulated in mode = \"inproc\" only");
        }
        if self.mode == Mode::Netns && self.join_secs > 0 {
            bail!("join_secs applies to mode = \"inproc\" only");
        }
        if self.mode == Mode::Netns && self.security.is_some() {
            bail!(
                "security applies to mode = \"inproc\" only: netns nodes use TCP with Noise and QUIC"
            );
        }
        Ok(())
    }

    /// Flows name existing groups, sizes fit the protocol, operations are bounded.
    fn validate_workload(&self) -> anyhow::Result<()> {
        for f in &self.workload.files {
            if f.size_bytes.unwrap_or(DEFAULT_FILE_BYTES) > MAX_FILE_BYTES {
                bail!("file size_bytes is at most {MAX_FILE_BYTES}");
            }
        }
        let flows = self
            .workload
            .lookups
            .iter()
            .chain(&self.workload.messages)
            .chain(&self.workload.files);
        let mut ops = 0usize;
        for f in flows {
            for name in [&f.from, &f.to] {
                if self.group(name).is_none() {
                    bail!("workload names group {name:?}, which is not defined");
                }
            }
            let (from, to) = (self.group(&f.from).unwrap(), self.group(&f.to).unwrap());
            if f.from == f.to && from.count < 2 {
                bail!("group {:?} needs two nodes to send within itself", f.from);
            }
            if to.count == 0 {
                bail!("group {:?} is empty", f.to);
            }
            ops = ops.saturating_add(f.count);
        }
        for f in &self.workload.messages {
            if f.size_bytes.unwrap_or(64) > commucat::wire::MAX_MESSAGE_BYTES {
                bail!(
                    "size_bytes is at most {} (the data protocol's message limit)",
                    commucat::wire::MAX_MESSAGE_BYTES
                );
            }
        }
        for g in &self.workload.groups {
            let Some(from) = self.group(&g.from) else {
                bail!(
                    "workload.groups names group {:?}, which is not defined",
                    g.from
                );
            };
            if g.members < 2
                || g.members > from.count
                || g.members > commucat::groups::log::MAX_MEMBERS
            {
                bail!(
                    "workload.groups: {} members per group from {:?} ({} nodes; at most {})",
                    g.members,
                    g.from,
                    from.count,
                    commucat::groups::log::MAX_MEMBERS
                );
            }
            if !(g.messages_per_minute >= 0.0 && g.messages_per_minute.is_finite()) {
                bail!("workload.groups: messages_per_minute must be a number ≥ 0");
            }
            let per_group = g.messages_per_minute * self.duration_secs as f64 / 60.0;
            ops = ops.saturating_add(g.groups.saturating_mul(per_group.ceil() as usize + 1));
        }
        if ops > MAX_OPERATIONS {
            bail!("{ops} operations: at most {MAX_OPERATIONS}");
        }
        Ok(())
    }
}

/// The scenarios shipped in `simnet/scenarios/`.
pub fn shipped_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for entry in std::fs::read_dir(shipped_dir()).unwrap() {
            let path = entry.unwrap().path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let base = r#"
            name = "x"
            mode = "inproc"
            seed = 1
            duration_secs = 5
            [[group]]
            name = "b"
            count = 1
            role = "bootstrap"
        "#;
        assert!(Scenario::parse(base).is_ok());
        let unknown = format!("{base}\nlatency_ms = 5\n");
        assert!(format!("{:#}", Scenario::parse(&unknown).unwrap_err()).contains("latency_ms"));
        let bad_group =
            format!("{base}\n[[workload.lookups]]\nfrom = \"b\"\nto = \"nope\"\ncount = 1\n");
        assert!(format!("{:#}", Scenario::parse(&bad_group).unwrap_err()).contains("nope"));
        let huge = base.replace("count = 1", "count = 100000");
        assert!(Scenario::parse(&huge).is_err());
        let paced = base.replace("duration_secs = 5", "duration_secs = 5\njoin_secs = 30");
        assert_eq!(Scenario::parse(&paced).unwrap().join_secs, 30);
        let paced_netns = paced.replace("\"inproc\"", "\"netns\"");
        assert!(format!("{:#}", Scenario::parse(&paced_netns).unwrap_err()).contains("join_secs"));
        let noise = base.replace("seed = 1", "seed = 1\nsecurity = \"noise\"");
        assert_eq!(
            Scenario::parse(&noise).unwrap().security,
            Some(crate::link::Security::Noise)
        );
        let noise_netns = noise.replace("\"inproc\"", "\"netns\"");
        assert!(format!("{:#}", Scenario::parse(&noise_netns).unwrap_err()).contains("security"));
        let tls = base.replace("seed = 1", "seed = 1\nsecurity = \"tls\"");
        assert!(format!("{:#}", Scenario::parse(&tls).unwrap_err()).contains("tls"));
        assert_eq!(Scenario::parse(base).unwrap().clock, Clock::Real);
        let virt = base.replace("seed = 1", "seed = 1\nclock = \"virtual\"");
        assert_eq!(Scenario::parse(&virt).unwrap().clock, Clock::Virtual);
        let virt_netns = virt.replace("\"inproc\"", "\"netns\"");
        let why = format!("{:#}", Scenario::parse(&virt_netns).unwrap_err());
        assert!(why.contains("clock"), "{why}");
        let sundial = base.replace("seed = 1", "seed = 1\nclock = \"sundial\"");
        assert!(format!("{:#}", Scenario::parse(&sundial).unwrap_err()).contains("sundial"));
    }
}
