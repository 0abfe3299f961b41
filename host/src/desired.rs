//! Desired state, as a pure function: the configured instances with the
//! plugins' metadata merged in, turned into the [`Target`] the registry
//! actor must make true (SPEC §5 merge rules: configured keys win; between
//! plugins, the one whose name sorts first wins, and the clash is reported).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, RegistryConfig};
use crate::record::{self, Instance};

/// One instance as it should appear in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRecord {
    /// The JSON value.
    pub value: String,
    /// `namespace/name/version`, for log lines.
    pub service: String,
    /// `scheme://address` of each endpoint, for log lines.
    pub endpoints: Vec<String>,
}

/// Everything the registry actor should make true: how to reach etcd and
/// hold keys, and the records by full etcd key.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub config: RegistryConfig,
    pub records: BTreeMap<String, DesiredRecord>,
}

/// Plugin output: plugin name → registry key → that plugin's key/values.
pub type PluginMetadata = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// Two plugins set the same metadata key on an instance; `winner` sorts first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clash {
    /// The instance's etcd key.
    pub key: String,
    /// The instance's `namespace/name/version`, for log lines.
    pub service: String,
    /// The metadata key both plugins set.
    pub metadata_key: String,
    pub winner: String,
    pub loser: String,
}

/// The registry target for `config` with `plugins`' metadata, plus the
/// plugin clashes found on the way (for the caller to warn about).
///
/// Instances whose registry key is in `withheld` (a health check is
/// critical) are left out: the registry deletes their keys.
pub fn build(
    config: &Config,
    plugins: &PluginMetadata,
    withheld: &BTreeSet<String>,
) -> (Target, Vec<Clash>) {
    let mut records = BTreeMap::new();
    let mut clashes = Vec::new();
    for instance in &config.agent.instances {
        let key = record::registry_key(&config.registry.prefix, instance);
        if withheld.contains(&key) {
            continue;
        }
        let metadata = merged_metadata(instance, &key, plugins, &mut clashes);
        records.insert(
            key,
            DesiredRecord {
                value: record::record_value(instance, &metadata),
                service: instance.service_label(),
                endpoints: instance.endpoints.iter().map(ToString::to_string).collect(),
            },
        );
    }
    clashes.sort();
    clashes.dedup();
    (
        Target {
            config: config.registry.clone(),
            records,
        },
        clashes,
    )
}

fn merged_metadata(
    instance: &Instance,
    registry_key: &str,
    plugins: &PluginMetadata,
    clashes: &mut Vec<Clash>,
) -> BTreeMap<String, String> {
    let mut merged = instance.metadata.clone();
    // Which plugin set each key, for clash reports.
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (plugin, per_instance) in plugins {
        let Some(output) = per_instance.get(registry_key) else {
            continue;
        };
        for (key, value) in output {
            if instance.metadata.contains_key(key) {
                continue;
            }
            match owner.get(key.as_str()) {
                Some(winner) => clashes.push(Clash {
                    key: registry_key.to_string(),
                    service: instance.service_label(),
                    metadata_key: key.clone(),
                    winner: winner.to_string(),
                    loser: plugin.clone(),
                }),
                None => {
                    owner.insert(key, plugin);
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::record::Endpoint;

    fn config() -> Config {
        Config {
            registry: RegistryConfig::default(),
            agent: AgentConfig {
                instances: vec![Instance {
                    namespace: "default".into(),
                    name: "svc".into(),
                    version: "1".into(),
                    region: String::new(),
                    zone: String::new(),
                    campus: String::new(),
                    metadata: [("env".to_string(), "dev".to_string())].into(),
                    endpoints: vec![Endpoint {
                        scheme: "grpc".into(),
                        address: "127.0.0.1:1".into(),
                        metadata: BTreeMap::new(),
                    }],
                }],
                checks: vec![Vec::new()],
                plugins: None,
                admin: None,
                shutdown_timeout: crate::config::DEFAULT_SHUTDOWN_TIMEOUT,
                local: Default::default(),
            },
        }
    }

    fn output(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_keys_win_and_plugins_clash_by_name_order() {
        let config = config();
        let key = record::registry_key("/yggdrasil/registry", &config.agent.instances[0]);
        let mut plugins = PluginMetadata::new();
        plugins.insert(
            "b-plugin".into(),
            [(key.clone(), output(&[("load", "2"), ("env", "prod")]))].into(),
        );
        plugins.insert(
            "a-plugin".into(),
            [(key.clone(), output(&[("load", "1"), ("extra", "x")]))].into(),
        );
        let (target, clashes) = build(&config, &plugins, &BTreeSet::new());
        let value = &target.records[&key].value;
        assert!(
            value.contains(r#""metadata":{"env":"dev","extra":"x","load":"1"}"#),
            "{value}"
        );
        assert_eq!(
            clashes,
            vec![Clash {
                key: key.clone(),
                service: "default/svc/1".into(),
                metadata_key: "load".into(),
                winner: "a-plugin".into(),
                loser: "b-plugin".into()
            }]
        );
    }

    #[test]
    fn a_withheld_instance_is_left_out_and_comes_back() {
        let config = config();
        let key = record::registry_key("/yggdrasil/registry", &config.agent.instances[0]);
        let (all, _) = build(&config, &PluginMetadata::new(), &BTreeSet::new());
        assert!(all.records.contains_key(&key));
        let withheld = BTreeSet::from([key.clone()]);
        let (held, _) = build(&config, &PluginMetadata::new(), &withheld);
        assert!(held.records.is_empty());
        let other = BTreeSet::from(["/yggdrasil/registry/default/other/x".to_string()]);
        assert_eq!(build(&config, &PluginMetadata::new(), &other).0, all);
    }

    #[test]
    fn plugin_output_never_changes_the_key() {
        let config = config();
        let (before, _) = build(&config, &PluginMetadata::new(), &BTreeSet::new());
        let key = before.records.keys().next().unwrap().clone();
        let mut plugins = PluginMetadata::new();
        plugins.insert(
            "load".into(),
            [(key.clone(), output(&[("load", "0.42")]))].into(),
        );
        let (after, _) = build(&config, &plugins, &BTreeSet::new());
        assert_eq!(after.records.keys().collect::<Vec<_>>(), vec![&key]);
        assert_ne!(before.records[&key].value, after.records[&key].value);
        assert_eq!(after.records[&key].service, "default/svc/1");
        assert_eq!(after.records[&key].endpoints, vec!["grpc://127.0.0.1:1"]);
    }
}
