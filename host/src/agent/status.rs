//! The supervisor's answer to a status request (`/status`, the status
//! page, `ygg-agent status`): [`AgentStatus`] filled from what the
//! supervisor owns (the effective config and each instance's source, the
//! operator's holds, the health checks and their recent runs, the plugin
//! host) and from the registry's status channel. It only reads, never
//! waits.

use std::collections::BTreeSet;
use std::time::SystemTime;

use tokio::time::Instant;

use super::health::Health;
use super::instances::Instances;
use super::plugins::Plugins;
use crate::checks::{self, CheckHost, CheckId};
use crate::config::{CheckStatus, Config};
use crate::desired::{self, PluginMetadata};
use crate::local::{Held, Source};
use crate::record;
use crate::registry::RegistryStatus;
use crate::status::{
    self, AgentStatus, CheckStatusView, CriticalCheck, HeldBy, InstanceState, InstanceStatus,
    RefusedFile, SessionStatus, unix_ms,
};

/// What the status is built from: the supervisor's parts, read only.
pub(super) struct Parts<'a> {
    pub config: &'a Config,
    pub instances: &'a Instances,
    pub health: &'a Health,
    pub plugins: Option<&'a Plugins>,
    pub registry: RegistryStatus,
    /// Registration has not begun yet (the start-up wait).
    pub starting: bool,
}

/// What `/status` serves, fresh.
pub(super) fn build(parts: &Parts<'_>) -> AgentStatus {
    let registry = &parts.registry;
    let effective = parts.instances.effective();
    let local = parts.instances.local();
    let checks_host = parts.health.checks();
    let now = Instant::now();
    let wall = SystemTime::now();
    let lease = registry.lease.map(|id| format!("{id:x}"));
    let pending: BTreeSet<&str> = registry.pending.iter().map(String::as_str).collect();
    let prefix = &effective.registry.prefix;
    let no_plugins = PluginMetadata::new();
    let instances = (effective.agent.instances.iter().enumerate())
        .map(|(index, instance)| {
            let key = record::registry_key(prefix, instance);
            let source = parts.instances.sources().get(index);
            let id = source.map_or_else(|| record::instance_key(instance), |s| s.id().to_string());
            let count = effective.agent.checks.get(index).map_or(0, Vec::len);
            let checks: Vec<CheckStatusView> = (0..count)
                .filter_map(|position| {
                    check_status(
                        checks_host,
                        &CheckId {
                            instance_key: key.clone(),
                            index: position,
                        },
                    )
                })
                .collect();
            let identity = source.map_or("", |s| s.identity());
            let held = local.held(&id, identity).map(|held| match held {
                Held::Maintenance(reason) => HeldBy::Maintenance {
                    node: !local.maintenance.instances.contains_key(identity),
                    reason,
                },
                Held::Drained => HeldBy::Drained {
                    node: !local.drained.contains(identity),
                },
                Held::TtlExpired => HeldBy::TtlExpired {
                    ttl: local.ttl(&id),
                },
            });
            let critical = checks
                .iter()
                .find(|c| c.status == "critical")
                .filter(|_| parts.health.withheld().contains(&key))
                .map(|c| CriticalCheck {
                    check: &c.check,
                    output: &c.output,
                    since_ms: c.since_ms,
                });
            let confirmed = !pending.contains(key.as_str()) && registry.connected;
            let (state, mut reason) = status::decide(
                held.as_ref(),
                critical.as_ref(),
                confirmed && !parts.starting,
                lease.as_deref(),
                registry.connected,
            );
            if state == InstanceState::Pending && parts.starting {
                reason = "starting: registration begins once the plugins have answered".into();
            }
            let since_ms = match state {
                InstanceState::Withheld => critical.as_ref().and_then(|c| c.since_ms),
                InstanceState::TtlExpired => (local.api.get(&id))
                    .and_then(|entry| entry.due)
                    .map(|due| unix_ms(wall - now.saturating_duration_since(due))),
                _ => None,
            };
            let ttl = local.ttl(&id).map(|t| format!("{t:?}"));
            let metadata = desired::instance_metadata(
                instance,
                &key,
                parts.plugins.map_or(&no_plugins, |p| p.metadata()),
            );
            InstanceStatus {
                id,
                service: instance.service_label(),
                source: source.map_or("config", |s| s.kind().name()).to_string(),
                origin: source.map_or_else(String::new, |s| s.origin().to_string()),
                state,
                reason,
                since_ms,
                lease: (state == InstanceState::Registered)
                    .then(|| lease.clone())
                    .flatten(),
                ttl,
                endpoints: instance.endpoints.iter().map(ToString::to_string).collect(),
                metadata,
                key,
                checks,
            }
        })
        .collect();
    let refused = parts.instances.refused().map_or_else(Vec::new, |dir| {
        dir.refused()
            .map(|(file, reasons)| RefusedFile {
                file: file.display().to_string(),
                state: InstanceState::Refused,
                reasons: reasons.to_vec(),
            })
            .collect()
    });
    let registry_config = &parts.config.registry;
    AgentStatus {
        now_ms: unix_ms(wall),
        instances,
        refused,
        plugins: parts.plugins.map_or_else(Vec::new, |p| p.host().status()),
        etcd: SessionStatus {
            endpoints: (registry_config.client.endpoints.iter())
                .map(|e| status::endpoint_without_credentials(e))
                .collect(),
            connected: registry.connected,
            lease,
            ttl_s: registry_config.ttl.as_secs(),
            ttl_left_ms: registry.lease_expires_at.map(|at| {
                u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0)
            }),
            last_repair_check_ms: registry.last_verify.map(|(at, _)| unix_ms(at)),
            last_repaired: registry.last_verify.map_or(0, |(_, n)| n as u64),
            desired: registry.desired,
            registered: registry.registered,
            ready: registry.ready,
        },
        maintenance: local.maintenance.node.clone(),
        drained: local.node_drained,
    }
}

/// One check's view: status, last output, since when, recent runs.
fn check_status(checks: &CheckHost, id: &CheckId) -> Option<CheckStatusView> {
    let view = checks.get(id)?;
    let latest = checks.latest(id);
    let (history, since) = checks.history(id)?;
    Some(CheckStatusView {
        check: checks::describe(&view.config.probe),
        status: match view.status {
            CheckStatus::Passing => "passing",
            CheckStatus::Critical => "critical",
        }
        .to_string(),
        output: latest
            .as_ref()
            .map_or_else(String::new, |last| match &last.last {
                Ok(output) | Err(output) => output.clone(),
            }),
        duration_ms: latest
            .as_ref()
            .map(|last| last.duration.as_secs_f64() * 1000.0),
        since_ms: Some(unix_ms(since)),
        history,
    })
}

/// `GET /v1/instances`: every instance, its source and its state.
pub(super) fn listing(instances: &Instances, withheld: &BTreeSet<String>) -> serde_json::Value {
    let local = instances.local();
    let listed: Vec<serde_json::Value> = (instances.effective().agent.instances.iter())
        .zip(instances.sources())
        .map(|(instance, source)| {
            let held = local.held(source.id(), source.identity());
            let state = match &held {
                Some(held) => held.state(),
                None if withheld.contains(source.key()) => "withheld",
                None => "registered",
            };
            let ttl = local.ttl(source.id());
            let reason = match held {
                Some(Held::Maintenance(reason)) => reason,
                Some(Held::Drained) => "drained by the operator (`maint disable` ends it)".into(),
                Some(Held::TtlExpired) => format!(
                    "no pass within its ttl of {}",
                    ttl.map_or_else(String::new, |t| format!("{t:?}"))
                ),
                None if state == "withheld" => {
                    "a health check is critical (`ygg-agent status` shows it)".into()
                }
                None => String::new(),
            };
            serde_json::json!({
                "id": source.id(),
                "source": source.kind().name(),
                "origin": source.origin(),
                "service": instance.service_label(),
                "key": source.key(),
                "state": state,
                "reason": (!reason.is_empty()).then_some(reason),
                "ttl": ttl.map(|ttl| format!("{ttl:?}")),
                "identity": source.identity(),
            })
        })
        .collect();
    // A refused file of the instances folder, with its first problem
    // (`check --config` prints them all).
    let refused = (instances.refused().into_iter())
        .flat_map(|dir| dir.refused())
        .map(|(path, problems)| {
            let more = match problems.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            serde_json::json!({
                "id": null,
                "source": Source::File.name(),
                "origin": path.display().to_string(),
                "service": null,
                "key": null,
                "state": "refused",
                "reason": format!("{}{more}", problems.first().map_or("", String::as_str)),
                "ttl": null,
            })
        });
    let listed: Vec<serde_json::Value> = listed.into_iter().chain(refused).collect();
    serde_json::json!({
        "instances": listed,
        "maintenance": local.maintenance.node,
        "drained": local.node_drained,
    })
}
