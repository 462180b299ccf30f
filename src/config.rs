//! Node configuration, layered: built-in defaults < TOML file (`--config`) < `COMMUCAT_*` environment
//! < command-line flags.
//!
//! Environment keys: `COMMUCAT_<KEY>` for top-level keys and `COMMUCAT_<SECTION>__<KEY>` (two
//! underscores) for keys in a section, e.g. `COMMUCAT_ROLE=bootstrap`,
//! `COMMUCAT_KAD__MODE=server`, `COMMUCAT_NETWORK__LISTEN='["/ip4/0.0.0.0/tcp/4001"]'`.
//! Unknown keys, in any layer, are an error that names the key and where it came from.
//!
//! Each default is stated once, in code: the `Default` impl of its section, beside the section's
//! owner. `config/desktop.toml` documents every key with its default for people, and a test keeps
//! it equal to the built-in defaults.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::net::peer_id_of;

/// Bounds of `data.rekey_bytes`: below, key updates would cost more than the data; above, a key
/// would come near AES-GCM's margin (`protocols/data-v1.md` §2, SEALED).
pub const MIN_REKEY_BYTES: u64 = 4096;
pub const MAX_REKEY_BYTES: u64 = 1 << 36;

pub use crate::{
    assist::config::{Config as Assist, Gateway, Signaling, TurnServer},
    control::Config as Control,
    data::Config as Data,
    dht::{Config as Kad, Mode as KadMode},
    node::config::{Autonat, BUILTIN_PEERS_TOML, Bootstrap, Mdns, Network, Presence, Relay, Role},
    store::{Config as Storage, peerbook::Config as PeerBook},
};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "COMMUCAT_";
/// The environment variable that sets configuration key `key`: `autonat.recheck_secs` is
/// `COMMUCAT_AUTONAT__RECHECK_SECS`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// `COMMUCAT_*` variables (lower-cased, prefix removed) that are command-line settings, not config keys.
pub const ENV_NOT_CONFIG: &[&str] = &["data_dir", "log_format"];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read config file {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and unknown or mistyped keys; the message names the key and its source.
    #[error("{}", describe(.0))]
    Invalid(Box<figment::Error>),
    #[error("invalid value for `{key}`: {reason}")]
    Value { key: &'static str, reason: String },
}

/// The effective node configuration. Every field states its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What this node is for: `desktop` (default) or `bootstrap`.
    pub role: Role,
    pub network: Network,
    pub bootstrap: Bootstrap,
    pub kad: Kad,
    pub mdns: Mdns,
    pub autonat: Autonat,
    pub relay: Relay,
    pub peerbook: PeerBook,
    pub presence: Presence,
    pub data: Data,
    pub control: Control,
    pub assist: Assist,
    pub storage: Storage,
}

/// Values given on the command line: the last and strongest layer. `None` leaves a key alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub network: NetworkOverrides,
    pub bootstrap: BootstrapOverrides,
    pub control: ControlOverrides,
    pub assist: AssistOverrides,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<Multiaddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_addresses: Option<Vec<Multiaddr>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BootstrapOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Multiaddr>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AssistOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun_listen: Option<SocketAddr>,
}

impl Config {
    /// Builds the effective config from the defaults, an optional file, the `COMMUCAT_*` process
    /// environment and the command-line overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment treats a missing file as empty; a file the user named must exist and be readable.
            std::fs::read(path).map_err(|source| Error::Unreadable {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed(ENV_PREFIX).ignore(ENV_NOT_CONFIG).split("__");
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| Error::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The config a TOML text gives on top of the built-in defaults, checked as [`Config::load`]
    /// checks a file (no environment, no flags).
    pub fn parse_toml(text: &str) -> Result<Self, Error> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| Error::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: bootstrap addresses name a peer, values that depend on each other
    /// agree. (Limits that must not be 0 have `NonZero` types: serde refuses a 0 with the key and
    /// its source.) Errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        self.check_node()?;
        self.check_data()?;
        check_assist(&self.assist)
    }

    fn check_node(&self) -> Result<(), Error> {
        for addr in &self.bootstrap.peers {
            if peer_id_of(addr).is_none() {
                return Err(Error::Value {
                    key: "bootstrap.peers",
                    reason: format!("{addr} does not end in /p2p/<peer-id>"),
                });
            }
        }
        if self.network.listen.is_empty() {
            return Err(Error::Value {
                key: "network.listen",
                reason: "at least one listen address is needed".into(),
            });
        }
        let n = &self.network;
        if n.trim_connections_above >= n.max_connections {
            return Err(Error::Value {
                key: "network.trim_connections_above",
                reason: "must be below network.max_connections (trimming starts before \
                         connections are refused)"
                    .into(),
            });
        }
        if n.trim_connections_to >= n.trim_connections_above.get() {
            return Err(Error::Value {
                key: "network.trim_connections_to",
                reason: "must be below network.trim_connections_above".into(),
            });
        }
        if self.presence.ttl_secs > crate::dht::record::MAX_TTL_SECS {
            return Err(Error::Value {
                key: "presence.ttl_secs",
                reason: format!(
                    "at most {} (other nodes refuse longer-lived records)",
                    crate::dht::record::MAX_TTL_SECS
                ),
            });
        }
        if self.presence.republish_secs >= self.presence.ttl_secs {
            return Err(Error::Value {
                key: "presence.republish_secs",
                reason: "must be shorter than presence.ttl_secs".into(),
            });
        }
        Ok(())
    }

    fn check_data(&self) -> Result<(), Error> {
        let d = &self.data;
        if !crate::wire::VERSIONS.contains(&d.protocol_version) {
            return Err(Error::Value {
                key: "data.protocol_version",
                reason: format!("must be one of {:?}", crate::wire::VERSIONS),
            });
        }
        if !(MIN_REKEY_BYTES..=MAX_REKEY_BYTES).contains(&d.rekey_bytes) {
            return Err(Error::Value {
                key: "data.rekey_bytes",
                reason: format!(
                    "must be {MIN_REKEY_BYTES} … {MAX_REKEY_BYTES} (AES-GCM seals at most 2^38 bytes per key)"
                ),
            });
        }
        if d.rekey_secs == 0 {
            return Err(Error::Value {
                key: "data.rekey_secs",
                reason: "must be at least 1".into(),
            });
        }
        if !(64..=8192).contains(&d.symbol_size) || !d.symbol_size.is_multiple_of(8) {
            return Err(Error::Value {
                key: "data.symbol_size",
                reason: "must be 64 … 8192 and a multiple of 8".into(),
            });
        }
        if !(4096..=4 << 20).contains(&d.block_size)
            || !d.block_size.is_multiple_of(u32::from(d.symbol_size))
        {
            return Err(Error::Value {
                key: "data.block_size",
                reason: "must be 4 KiB … 4 MiB and a multiple of data.symbol_size".into(),
            });
        }
        if u64::from(d.block_size / u32::from(d.symbol_size)) > crate::fec::MAX_SYMBOLS_PER_BLOCK {
            return Err(Error::Value {
                key: "data.block_size",
                reason: format!(
                    "at most {} symbols of data.symbol_size per block",
                    crate::fec::MAX_SYMBOLS_PER_BLOCK
                ),
            });
        }
        if d.repair_per_mille > 1000 {
            return Err(Error::Value {
                key: "data.repair_per_mille",
                reason: "at most 1000 (as many repair as source packets)".into(),
            });
        }
        Ok(())
    }

    /// The node-level sections: what the swarm runs with.
    pub fn node(&self) -> crate::node::Config {
        crate::node::Config {
            role: self.role,
            network: self.network.clone(),
            bootstrap: self.bootstrap.clone(),
            kad: self.kad.clone(),
            mdns: self.mdns.clone(),
            autonat: self.autonat.clone(),
            relay: self.relay.clone(),
            peerbook: self.peerbook.clone(),
            presence: self.presence.clone(),
        }
    }

    /// The effective config as TOML (what `commucat config show` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is plain TOML values")
    }
}

fn check_assist(assist: &Assist) -> Result<(), Error> {
    if assist.tls_cert.is_some() != assist.tls_key.is_some() {
        return Err(Error::Value {
            key: "assist.tls_cert",
            reason: "assist.tls_cert and assist.tls_key go together".into(),
        });
    }
    for hash in &assist.token_hashes {
        if hash.len() != 64 || hex::decode(hash).is_err() {
            return Err(Error::Value {
                key: "assist.token_hashes",
                reason: format!("`{hash}` is not a SHA-256 hex digest (64 hex digits)"),
            });
        }
    }
    if assist.max_paths.get() > 64 {
        return Err(Error::Value {
            key: "assist.max_paths",
            reason: "at most 64".into(),
        });
    }
    if assist.device_ttl_secs.get() > crate::assist::tokens::MAX_TTL_SECS {
        return Err(Error::Value {
            key: "assist.device_ttl_secs",
            reason: format!("at most {} (a year)", crate::assist::tokens::MAX_TTL_SECS),
        });
    }
    if assist.pairing_code_ttl_secs.get() > crate::assist::pairing::MAX_CODE_TTL_SECS {
        return Err(Error::Value {
            key: "assist.pairing_code_ttl_secs",
            reason: format!(
                "at most {} (a day): a code is a secret to type, not to keep",
                crate::assist::pairing::MAX_CODE_TTL_SECS
            ),
        });
    }
    for turn in &assist.turn {
        if turn.urls.is_empty()
            || turn
                .urls
                .iter()
                .any(|u| !(u.starts_with("turn:") || u.starts_with("turns:")))
        {
            return Err(Error::Value {
                key: "assist.turn.urls",
                reason: "each TURN server needs `turn:` or `turns:` URIs".into(),
            });
        }
        let static_creds = turn.username.is_some() && turn.password.is_some();
        if turn.secret.is_some() == static_creds
            || turn.username.is_some() != turn.password.is_some()
        {
            return Err(Error::Value {
                key: "assist.turn",
                reason: format!(
                    "{}: give either `secret` or both `username` and `password`",
                    turn.urls[0]
                ),
            });
        }
    }
    Ok(())
}

/// A config error in the user's terms: the dotted key, what is wrong with it, and where it came from
/// (file, environment variable or flag). figment's own text shows its internal profile and
/// upper-cases environment keys.
fn describe(error: &figment::Error) -> String {
    use figment::{Source, error::Kind};
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e
                .path
                .iter()
                .map(|p| p.to_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            let origin = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(Source::File(path)) => format!("config file {}", path.display()),
                    _ if m.name.contains("environment") => format!(
                        "environment variable {ENV_PREFIX}{}",
                        e.path.join("__").to_uppercase()
                    ),
                    Some(Source::Code(_)) => "command-line flags".to_string(),
                    _ => m.name.to_string(),
                },
                None => "configuration".to_string(),
            };
            let what = match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!(
                        "unknown key `{key}` (expected one of: {})",
                        expected.join(", ")
                    )
                }
                kind if key.is_empty() => return format!("{origin}: {kind}"),
                kind => format!("invalid value for `{key}`: {kind}"),
            };
            format!("{what} in {origin}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dotted key of a TOML table (`network.listen`, …).
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => keys(t, &format!("{key}."), out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn keys_name_their_environment_variables() {
        assert_eq!(
            env_var("autonat.recheck_secs"),
            "COMMUCAT_AUTONAT__RECHECK_SECS"
        );
    }

    #[test]
    fn builtin_bootstrap_list_parses() {
        let cfg = Config::default();
        cfg.validate().expect("built-in defaults are valid");
        assert_eq!(cfg.bootstrap.peers, *crate::node::config::BUILTIN_PEERS);
    }

    #[test]
    fn shipped_configs_load_and_document_every_key() {
        let mut all = Vec::new();
        keys(
            &toml::from_str(&Config::default().to_toml()).unwrap(),
            "",
            &mut all,
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["desktop.toml", "bootstrap.toml", "dev.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            // Strict parse of the file alone: deny_unknown_fields, every value of the right type.
            let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut present = Vec::new();
            keys(&toml::from_str(&text).unwrap(), "", &mut present);
            let missing: Vec<_> = all.iter().filter(|k| !present.contains(k)).collect();
            assert!(missing.is_empty(), "{name} lacks {missing:?}");
        }
        let desktop: Config =
            toml::from_str(&std::fs::read_to_string(dir.join("desktop.toml")).unwrap()).unwrap();
        assert_eq!(
            desktop,
            Config::default(),
            "desktop.toml spells out the built-in defaults"
        );
    }

    #[test]
    fn a_zero_limit_is_refused_by_key_and_source() {
        let err = Config::parse_toml("[assist.signaling]\nmax_rooms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`assist.signaling.max_rooms`") && err.contains("nonzero"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "[network]\nping_interval_secs = 0\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`network.ping_interval_secs`")
                && err.contains(&file.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn bootstrap_addresses_must_name_a_peer() {
        let mut cfg = Config::default();
        cfg.bootstrap.peers = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("bootstrap.peers") && err.contains("/p2p/"),
            "{err}"
        );
    }
}
