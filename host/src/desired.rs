//! Desired state, as a pure function: the configured instances with the
//! plugins' metadata merged in, turned into the [`Target`] the registry
//! actor must make true (SPEC §5 merge rules: configured keys win; between
//! plugins, the one whose name sorts first wins, and the clash is reported).
//! Each instance gets a Yggdrasil record, etcd naming keys, or both
//! (`agent.publish`). [`Throttle`] spaces out rewrites only plugin output
//! caused (`agent.plugins.minRewriteInterval`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, RegistryConfig};
use crate::record::{self, Instance};

/// One key as it should appear in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRecord {
    /// The JSON value. Shared (`Arc`), as are the other texts: a target is
    /// cloned and compared whole at every publish, and what the registry
    /// wrote keeps the same value, so an unchanged record compares by
    /// pointer instead of byte by byte.
    pub value: Arc<str>,
    /// `namespace/name/version`, for log lines.
    pub service: Arc<str>,
    /// `scheme://address` of each endpoint, for log lines.
    pub endpoints: Arc<[String]>,
    pub kind: RecordKind,
    /// A digest of the configured instance the record comes from: equal
    /// digests and different values mean only plugin output changed.
    pub source: u64,
}

/// Which format a key is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Yggdrasil's instance record: counted as an instance.
    Instance,
    /// One endpoint in etcd's gRPC naming format.
    Naming,
}

/// Everything the registry actor should make true: how to reach etcd and
/// hold keys, and the records by full etcd key.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub config: RegistryConfig,
    pub records: BTreeMap<String, DesiredRecord>,
}

impl Target {
    /// How many instances have a Yggdrasil record here.
    pub fn instances(&self) -> usize {
        self.records
            .values()
            .filter(|r| r.kind == RecordKind::Instance)
            .count()
    }
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
    let publish = &config.agent.publish;
    let mut records = BTreeMap::new();
    let mut clashes = Vec::new();
    for instance in &config.agent.instances {
        let key = record::registry_key(&config.registry.prefix, instance);
        if withheld.contains(&key) {
            continue;
        }
        let source = digest(instance);
        if let Some(naming) = &publish.etcd_naming {
            let target = naming.target(instance);
            let grpc = instance
                .endpoints
                .iter()
                .filter(|e| e.scheme == record::NAMING_SCHEME);
            for (naming_key, endpoint) in
                record::naming_keys(&target, instance).into_iter().zip(grpc)
            {
                // Two instances with one key: the first keeps it (`check` warns).
                records.entry(naming_key).or_insert_with(|| DesiredRecord {
                    value: record::naming_value(&endpoint.address).into(),
                    service: instance.service_label().into(),
                    endpoints: Arc::from([endpoint.to_string()]),
                    kind: RecordKind::Naming,
                    source,
                });
            }
        }
        if let Some(record) = instance_record(config, instance, &key, plugins, &mut clashes) {
            records.insert(key, record);
        }
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

/// The Yggdrasil record `build` writes for `instance` (registry key
/// `key`) with `plugins`' metadata, or `None` when `publish.yggdrasil` is
/// off. Clashes found on the way are added to `clashes`.
pub fn instance_record(
    config: &Config,
    instance: &Instance,
    key: &str,
    plugins: &PluginMetadata,
    clashes: &mut Vec<Clash>,
) -> Option<DesiredRecord> {
    if !config.agent.publish.yggdrasil {
        return None;
    }
    let metadata = merged_metadata(instance, key, plugins, clashes);
    Some(DesiredRecord {
        value: record::record_value(instance, &metadata).into(),
        service: instance.service_label().into(),
        endpoints: instance.endpoints.iter().map(ToString::to_string).collect(),
        kind: RecordKind::Instance,
        source: digest(instance),
    })
}

/// Identifies the configured instance (not its plugin output).
fn digest(instance: &Instance) -> u64 {
    let mut hasher = DefaultHasher::new();
    instance.hash(&mut hasher);
    hasher.finish()
}

/// Holds back a record change that only plugin output caused until
/// `minRewriteInterval` has passed since the key was last written; any
/// other change (config, identity, health: a new key or a different
/// source) goes out at once. What is finally written is always the newest
/// value.
#[derive(Debug, Default)]
pub struct Throttle {
    min: Option<Duration>,
    /// What was last handed to the registry, by key.
    sent: HashMap<String, Sent>,
}

#[derive(Debug)]
struct Sent {
    at: Instant,
    value: Arc<str>,
    source: u64,
}

impl Throttle {
    pub fn new(min: Option<Duration>) -> Throttle {
        Throttle {
            min,
            sent: HashMap::new(),
        }
    }

    /// A new interval applies to changes from now on.
    pub fn set_min(&mut self, min: Option<Duration>) {
        if min.is_none() {
            self.sent.clear();
        }
        self.min = min;
    }

    /// `target` with held-back values put back to what was last sent, and
    /// when the earliest of them may go out (`None`: nothing is held).
    pub fn apply(&mut self, now: Instant, mut target: Target) -> (Target, Option<Instant>) {
        let Some(min) = self.min else {
            return (target, None);
        };
        let mut due: Option<Instant> = None;
        for (key, record) in target.records.iter_mut() {
            match self.sent.get_mut(key) {
                Some(sent) if sent.value == record.value => {}
                Some(sent) if sent.source == record.source && now < sent.at + min => {
                    record.value.clone_from(&sent.value);
                    let at = sent.at + min;
                    due = Some(due.map_or(at, |d| d.min(at)));
                }
                Some(sent) => {
                    sent.value.clone_from(&record.value);
                    sent.source = record.source;
                    sent.at = now;
                }
                None => {
                    let sent = Sent {
                        at: now,
                        value: record.value.clone(),
                        source: record.source,
                    };
                    self.sent.insert(key.clone(), sent);
                }
            }
        }
        self.sent.retain(|key, _| target.records.contains_key(key));
        (target, due)
    }
}

/// The metadata `build` writes for `instance` (its own, then the
/// plugins'), for the status.
pub fn instance_metadata(
    instance: &Instance,
    registry_key: &str,
    plugins: &PluginMetadata,
) -> BTreeMap<String, String> {
    merged_metadata(instance, registry_key, plugins, &mut Vec::new())
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
    use crate::config::{AgentConfig, EtcdNaming, Publish};
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
                publish: Publish::default(),
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
        assert_eq!(&*after.records[&key].service, "default/svc/1");
        assert_eq!(&*after.records[&key].endpoints, ["grpc://127.0.0.1:1"]);
    }

    fn with_naming(mut config: Config, yggdrasil: bool, naming: EtcdNaming) -> Config {
        config.agent.instances[0].endpoints.push(Endpoint {
            scheme: "http".into(),
            address: "127.0.0.1:2".into(),
            metadata: BTreeMap::new(),
        });
        config.agent.instances[0].endpoints.push(Endpoint {
            scheme: "grpc".into(),
            address: "127.0.0.1:3".into(),
            metadata: BTreeMap::new(),
        });
        config.agent.publish = Publish {
            yggdrasil,
            etcd_naming: Some(naming),
        };
        config
    }

    #[test]
    fn etcd_naming_writes_one_key_per_grpc_endpoint_beside_the_record() {
        let config = with_naming(config(), true, EtcdNaming::default());
        let (target, _) = build(&config, &PluginMetadata::new(), &BTreeSet::new());
        let keys: Vec<_> = target.records.keys().map(String::as_str).collect();
        let instance_key = record::registry_key("/yggdrasil/registry", &config.agent.instances[0]);
        assert_eq!(
            keys,
            vec![
                instance_key.as_str(),
                "default/svc/127.0.0.1:1",
                "default/svc/127.0.0.1:3"
            ]
        );
        assert_eq!(target.instances(), 1);
        let naming = &target.records["default/svc/127.0.0.1:3"];
        assert_eq!(naming.kind, RecordKind::Naming);
        assert_eq!(
            &*naming.value,
            r#"{"Op":0,"Addr":"127.0.0.1:3","Metadata":null}"#
        );
        assert_eq!(&*naming.endpoints, ["grpc://127.0.0.1:3"]);

        // A withheld instance loses its naming keys too.
        let withheld = BTreeSet::from([instance_key]);
        assert!(
            build(&config, &PluginMetadata::new(), &withheld)
                .0
                .records
                .is_empty()
        );
    }

    #[test]
    fn etcd_naming_alone_with_a_prefix_and_a_target_of_its_own() {
        let naming = EtcdNaming {
            prefix: "/services".into(),
            targets: [("default/svc".to_string(), "greeter".to_string())].into(),
        };
        let config = with_naming(config(), false, naming);
        let (target, _) = build(&config, &PluginMetadata::new(), &BTreeSet::new());
        let keys: Vec<_> = target.records.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "/services/greeter/127.0.0.1:1",
                "/services/greeter/127.0.0.1:3"
            ]
        );
        assert_eq!(target.instances(), 0);
    }

    fn with_load(config: &Config, load: &str) -> Target {
        let key = record::registry_key("/yggdrasil/registry", &config.agent.instances[0]);
        let mut plugins = PluginMetadata::new();
        plugins.insert("load".into(), [(key, output(&[("load", load)]))].into());
        build(config, &plugins, &BTreeSet::new()).0
    }

    fn value(target: &Target) -> &str {
        &target.records.values().next().unwrap().value
    }

    #[test]
    fn the_throttle_holds_plugin_only_changes_and_writes_the_newest_when_due() {
        let config = config();
        let start = Instant::now();
        let min = Duration::from_secs(30);
        let mut throttle = Throttle::new(Some(min));

        let (first, due) = throttle.apply(start, with_load(&config, "1"));
        assert!(value(&first).contains(r#""load":"1""#));
        assert_eq!(due, None);

        // Two plugin-only changes within the interval: held, due at +30 s.
        let (held, due) = throttle.apply(start + Duration::from_secs(5), with_load(&config, "2"));
        assert_eq!(value(&held), value(&first));
        assert_eq!(due, Some(start + min));
        let (held, _) = throttle.apply(start + Duration::from_secs(10), with_load(&config, "3"));
        assert_eq!(value(&held), value(&first));

        // When due, the newest value goes out, and the clock restarts.
        let (written, due) = throttle.apply(start + min, with_load(&config, "3"));
        assert!(value(&written).contains(r#""load":"3""#));
        assert_eq!(due, None);
        let (held, due) = throttle.apply(
            start + min + Duration::from_secs(1),
            with_load(&config, "4"),
        );
        assert!(value(&held).contains(r#""load":"3""#));
        assert_eq!(due, Some(start + min + min));
    }

    #[test]
    fn the_throttle_never_holds_config_identity_or_health_changes() {
        let config = config();
        let start = Instant::now();
        let mut throttle = Throttle::new(Some(Duration::from_secs(300)));
        throttle.apply(start, with_load(&config, "1"));

        // A config change to the instance (same key): written at once.
        let mut edited = config.clone();
        edited.agent.instances[0].region = "eu".into();
        let (written, due) =
            throttle.apply(start + Duration::from_secs(1), with_load(&edited, "2"));
        assert!(
            value(&written).contains(r#""region":"eu""#),
            "{}",
            value(&written)
        );
        assert!(value(&written).contains(r#""load":"2""#));
        assert_eq!(due, None);

        // Withheld (no record), then back: the comeback is immediate.
        let now = start + Duration::from_secs(2);
        let (gone, _) = throttle.apply(
            now,
            Target {
                records: BTreeMap::new(),
                ..written.clone()
            },
        );
        assert!(gone.records.is_empty());
        let (back, due) = throttle.apply(now, with_load(&edited, "5"));
        assert!(value(&back).contains(r#""load":"5""#));
        assert_eq!(due, None);

        // No interval: nothing is ever held.
        let mut off = Throttle::new(None);
        off.apply(start, with_load(&config, "1"));
        let (written, due) = off.apply(start, with_load(&config, "2"));
        assert!(value(&written).contains(r#""load":"2""#));
        assert_eq!(due, None);
    }
}
