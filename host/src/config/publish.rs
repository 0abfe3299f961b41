//! `agent.publish` and `agent.etcdNaming`: the formats written to etcd, and
//! where the etcd naming keys go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};

use crate::record::{self, Instance};

use super::report::{Report, YamlPath};
use super::rules::{check_segment, printable};
use super::yaml::{Section, Unknown};

/// What the agent writes to etcd for each instance (`agent.publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Yggdrasil's record under `<prefix>/<namespace>/<name>/<id>`.
    pub yggdrasil: bool,
    /// etcd's gRPC naming format: one key per grpc endpoint.
    pub etcd_naming: Option<EtcdNaming>,
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            yggdrasil: true,
            etcd_naming: None,
        }
    }
}

/// `agent.etcdNaming`: where the etcd naming keys go
/// (`go.etcd.io/etcd/client/v3/naming/endpoints`, what gRPC's
/// `etcd:///<target>` resolver reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdNaming {
    /// Put before every target with a `/` (empty: targets are used as they
    /// are).
    pub prefix: String,
    /// The target of a service by `<namespace>/<name>`; a service not
    /// listed has the target `<namespace>/<name>`.
    pub targets: BTreeMap<String, String>,
}

impl EtcdNaming {
    /// The full target a gRPC client dials (`etcd:///<target>`) to reach
    /// `instance`'s service.
    pub fn target(&self, instance: &Instance) -> String {
        let service = format!("{}/{}", instance.namespace, instance.name);
        let target = self.targets.get(&service).cloned().unwrap_or(service);
        if self.prefix.is_empty() {
            target
        } else {
            format!("{}/{target}", self.prefix)
        }
    }
}

/// `agent.publish` (a list of formats) and `agent.etcdNaming`.
pub(super) fn read_publish(agent: &mut Section) -> Publish {
    let naming = agent.section("etcdNaming");
    let listed = agent.list("publish").value();
    let mut publish = Publish {
        yggdrasil: listed.is_none(),
        etcd_naming: None,
    };
    let mut wants_naming = false;
    if let Some(list) = &listed {
        if list.is_empty() {
            list.error(format!(
                "lists no format: write one or both of {PUBLISH_FORMATS}"
            ));
        }
        for item in list.items() {
            let format = item.string().check(|f| match f.as_str() {
                "yggdrasil" | "etcd-naming" => Ok(()),
                other => Err(format!(
                    "unknown format `{other}`: the formats are {PUBLISH_FORMATS}"
                )),
            });
            match format.valid().as_deref() {
                Some("yggdrasil") => publish.yggdrasil = true,
                Some("etcd-naming") => wants_naming = true,
                _ => {}
            }
        }
    }
    let unused = "set, but `agent.publish` does not list etcd-naming: no naming keys are written";
    let naming = naming.warn(|_| (!wants_naming).then(|| unused.to_string()));
    let naming = naming.value().map(read_etcd_naming);
    if wants_naming {
        publish.etcd_naming = Some(naming.unwrap_or_default());
    }
    publish
}

const PUBLISH_FORMATS: &str = "`yggdrasil` and `etcd-naming`";

fn read_etcd_naming(mut map: Section) -> EtcdNaming {
    #[rustfmt::skip]
    let naming = EtcdNaming {
        prefix: map.string_or_empty("prefix").check(|p| printable(p)).check(|p| naming_prefix(p)).or_default(),
        targets: map.string_map("targets").check(|targets| {
            let problems: Vec<String> = (targets.iter())
                .filter_map(|(service, target)| {
                    let problem = naming_service(service).and_then(|()| naming_target(target)).err()?;
                    Some(format!("`{service}`: {problem}"))
                })
                .collect();
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }).or_default(),
    };
    map.finish(Unknown::Error);
    naming
}

/// A key of `etcdNaming.targets`: `<namespace>/<name>`.
fn naming_service(service: &str) -> Result<(), String> {
    match service.split_once('/') {
        Some((namespace, name)) if !name.contains('/') => {
            check_segment("namespace", namespace).and_then(|()| check_segment("name", name))
        }
        _ => Err("name a service as `<namespace>/<name>`".into()),
    }
}

/// `etcdNaming.prefix`: gRPC hands etcd's resolver the target without
/// its leading `/` (`etcd:///services/greeter` looks up
/// `services/greeter/…`), so a key under `/services` is never found.
fn naming_prefix(prefix: &str) -> Result<(), String> {
    match prefix.strip_prefix('/') {
        Some(rest) => Err(format!(
            "`{prefix}` must not begin with `/`: gRPC hands etcd's resolver the target without it (`etcd:///{rest}/greeter` reads keys under `{rest}/greeter/`), so keys under `{prefix}` are never found; write `{rest}`"
        )),
        None => Ok(()),
    }
}

/// A naming target: the part of the key before `/<address>`.
fn naming_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.starts_with('/') || target.ends_with('/') {
        return Err(format!(
            "target `{target}` must be non-empty and not begin or end with `/`"
        ));
    }
    if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "target `{target}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Warns about targets that are a prefix of another (etcd's resolver reads
/// every key that starts with the target, without a `/` after it, so a
/// client of `svc` also gets `svc-canary`'s endpoints) and about naming
/// keys two instances would both write.
pub(super) fn check_naming_targets(
    naming: &EtcdNaming,
    instances: &[Instance],
    (at, line): (&YamlPath, Option<usize>),
    report: &Report,
) {
    let targets: BTreeSet<String> = instances.iter().map(|i| naming.target(i)).collect();
    for short in &targets {
        for long in targets.range::<String, _>((Excluded(short), Unbounded)) {
            if !long.starts_with(short.as_str()) {
                break;
            }
            report.warning(
                at,
                line,
                format!(
                    "etcd-naming target `{short}` is a prefix of `{long}`: etcd's resolver reads every key \
                     that starts with its target, so a client of `{short}` also gets the endpoints of `{long}` \
                     (choose targets where neither is a prefix of the other, e.g. `{short}/main` and `{long}`)"
                ),
            );
        }
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for instance in instances {
        for key in record::naming_keys(&naming.target(instance), instance) {
            let label = instance.service_label();
            if let Some(first) = seen.insert(key.clone(), label.clone()) {
                report.warning(
                    at,
                    line,
                    format!("services {first} and {label} both have the etcd-naming key `{key}`: only {first}'s is written"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{SEED, assert_has, errors, ok, warnings};

    fn with_publish(publish: &str) -> String {
        SEED.replace(
            "  shutdownTimeout: 5s\n",
            &format!("  shutdownTimeout: 5s\n{publish}"),
        )
    }

    #[test]
    fn yggdrasil_alone_is_the_default_and_etcd_naming_is_added_by_publish() {
        assert_eq!(ok(SEED).config.agent.publish, Publish::default());
        let loaded = ok(&with_publish("  publish: [yggdrasil, etcd-naming]\n"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let publish = &loaded.config.agent.publish;
        assert!(publish.yggdrasil);
        let naming = publish.etcd_naming.as_ref().unwrap();
        assert_eq!(naming, &EtcdNaming::default());
        let instance = &loaded.config.agent.instances[0];
        assert_eq!(naming.target(instance), "default/example-registry-server");

        let text = with_publish(
            "  publish: [etcd-naming]\n  etcdNaming:\n    prefix: services\n    targets:\n      default/example-registry-server: example\n",
        );
        let loaded = ok(&text);
        let publish = &loaded.config.agent.publish;
        assert!(!publish.yggdrasil);
        let naming = publish.etcd_naming.as_ref().unwrap();
        assert_eq!(
            naming.target(&loaded.config.agent.instances[0]),
            "services/example"
        );
        // A leading `/` is refused, with the reason: a gRPC client would
        // never find the keys.
        let errors = errors(&with_publish(
            "  publish: [etcd-naming]\n  etcdNaming:\n    prefix: /services\n",
        ));
        assert!(
            errors.iter().any(|e| e.starts_with("agent.etcdNaming.prefix: `/services` must not begin with `/`: gRPC hands etcd's resolver the target without it")),
            "{errors:?}"
        );
    }

    #[test]
    fn publish_and_etcd_naming_errors_name_what_and_where() {
        let errors = errors(&with_publish(
            "  publish: [yggdrasil, consul]\n  etcdNaming:\n    targets:\n      svc: x\n      default/a: /x/\n    port: 1\n",
        ));
        assert_has(
            &errors,
            "agent.publish[1]: unknown format `consul`: the formats are `yggdrasil` and `etcd-naming` (line 35)",
        );
        assert_has(
            &errors,
            "agent.etcdNaming.targets: `default/a`: target `/x/` must be non-empty and not begin or end with `/`; \
             `svc`: name a service as `<namespace>/<name>` (line 38)",
        );
        assert_has(&errors, "agent.etcdNaming.port: unknown key (line 40)");
        let errors = self::errors(&with_publish("  publish: []\n"));
        assert_has(
            &errors,
            "agent.publish: lists no format: write one or both of `yggdrasil` and `etcd-naming` (line 35)",
        );
    }

    #[test]
    fn etcd_naming_warns_about_targets_that_are_prefixes_and_unused_settings() {
        let canary = r#"
    - name: example-registry-server-canary
      endpoints:
        - {scheme: grpc, address: "127.0.0.1:54322"}
"#;
        let text = with_publish("  publish: [yggdrasil, etcd-naming]\n").replace(
            "  plugins:\n",
            &format!("{}\n  plugins:\n", canary.trim_end()),
        );
        let warnings = warnings(&text);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(
                "etcd-naming target `default/example-registry-server` is a prefix of `default/example-registry-server-canary`"
            ),
            "{warnings:?}"
        );
        // Where to look: the line of the agent's naming settings.
        assert!(
            warnings[0].ends_with(')') && warnings[0].contains("(line "),
            "{warnings:?}"
        );
        let warnings = self::warnings(&with_publish("  etcdNaming: {prefix: x}\n"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("agent.etcdNaming: set, but `agent.publish` does not list etcd-naming: no naming keys are written (line 35)"),
            "{warnings:?}"
        );
    }
}
