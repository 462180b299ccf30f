//! `[group.config]`: node configuration overrides, merged key by key into a base config and
//! checked the way the node checks its own config file.

use anyhow::Context;
use commucat::config::Config;

/// `base` with every key of `overrides` replaced (tables merge, other values replace).
pub fn apply(base: Config, overrides: &toml::Table) -> anyhow::Result<Config> {
    let mut table = toml::Table::try_from(&base).context("the config is plain TOML")?;
    merge(&mut table, overrides);
    let cfg: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
    cfg.validate()?;
    Ok(cfg)
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_and_bad_keys_are_refused() {
        let t: toml::Table = toml::from_str("[data]\nmax_retry_secs = 7\n").unwrap();
        let cfg = apply(Config::default(), &t).unwrap();
        assert_eq!(cfg.data.max_retry_secs, 7);
        assert_eq!(
            cfg.network.listen,
            Config::default().network.listen,
            "untouched keys keep their values"
        );
        let bad: toml::Table = toml::from_str("[data]\nno_such_key = 1\n").unwrap();
        assert!(
            format!("{:#}", apply(Config::default(), &bad).unwrap_err()).contains("no_such_key")
        );
    }
}
