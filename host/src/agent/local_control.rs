//! The supervisor's local control (#12): the instances folder's runtime,
//! the effective config (the config's instances plus the folder's and the
//! API's, each with where it came from), what is held out of the target
//! (maintenance, drains, missed TTLs beside the health checks' withheld
//! set), the local API's calls: methods of [`Supervisor`] that, like the
//! rest of `handle`, never wait. And the drain of `shutdown`, which does
//! (after the loop has ended).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Debounce, InstanceSource, InstancesRuntime, Supervisor, Wiring};
use crate::api::{ApiCall, ApiReply};
use crate::config::{self, Config};
use crate::desired;
use crate::instances_dir::{self, DirScan, InstancesDir};
use crate::local::{self, Held, Source};
use crate::record;
use crate::registry::RegistryHandle;
use crate::watch::FolderWatch;

impl InstancesRuntime {
    pub(super) fn new(
        dir: PathBuf,
        defaults: config::CheckTiming,
        wiring: &Wiring,
    ) -> InstancesRuntime {
        let watch = match FolderWatch::new(wiring.instances_signals.clone()) {
            Ok(watch) => Some(watch),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "cannot watch the instances folder; changes apply on SIGHUP");
                None
            }
        };
        let mut runtime = InstancesRuntime {
            dir,
            defaults,
            state: InstancesDir::default(),
            watch,
            debounce: Debounce::default(),
            scanning: false,
            again: false,
        };
        runtime.scan(wiring);
        runtime
    }

    /// Starts a scan on a blocking thread (one at a time; one asked for
    /// meanwhile runs after it).
    pub(super) fn scan(&mut self, wiring: &Wiring) {
        self.debounce.take();
        if self.scanning {
            self.again = true;
            return;
        }
        self.scanning = true;
        let (dir, defaults) = (self.dir.clone(), self.defaults.clone());
        let scans = wiring.instance_scans.clone();
        wiring.tracker.spawn(async move {
            let scanned =
                tokio::task::spawn_blocking(move || instances_dir::scan(&dir, &defaults)).await;
            if let Ok(scan) = scanned {
                let _ = scans.send(scan).await;
            }
        });
    }
}

impl Supervisor {
    /// The instances of `config` that another source (the instances
    /// folder, the API) already holds: the later source, the config, is
    /// refused.
    pub(super) fn clashes_with_other_sources(&self, config: &Config) -> Vec<String> {
        let ours = self.config_sources(config);
        self.effective
            .agent
            .instances
            .iter()
            .zip(&self.sources)
            .filter(|(_, source)| source.source != Source::Config)
            .filter_map(|(instance, source)| {
                let key = record::registry_key(&config.registry.prefix, instance);
                let here = ours.get(&key)?;
                Some(format!(
                    "{here}: the same instance as {} ({}/{}, key {key})",
                    source.origin, instance.namespace, instance.name
                ))
            })
            .collect()
    }

    /// The config with every other source's instances appended.
    pub(super) fn refresh_effective(&mut self) {
        let mut effective = self.config.clone();
        let prefix = &self.config.registry.prefix;
        let source = |id: String, source: Source, origin: String, instance: &record::Instance| {
            InstanceSource {
                identity: local::identity(source, &id, instance),
                id,
                source,
                origin,
                key: record::registry_key(prefix, instance),
            }
        };
        let path = self.config_path.display();
        let mut sources: Vec<InstanceSource> = (self.config.agent.instances.iter().enumerate())
            .map(|(i, instance)| {
                let origin = format!("{path} agent.instances[{i}]");
                source(
                    record::instance_key(instance),
                    Source::Config,
                    origin,
                    instance,
                )
            })
            .collect();
        if let Some(instances) = self.instances.as_ref() {
            for (file, i, instance, checks) in instances.state.instances() {
                effective.agent.instances.push(instance.clone());
                effective.agent.checks.push(checks.to_vec());
                let origin = format!("{} [{i}]", file.display());
                sources.push(source(
                    record::instance_key(instance),
                    Source::File,
                    origin,
                    instance,
                ));
            }
        }
        for (id, entry) in &self.local.api {
            let registration = &entry.registration;
            effective
                .agent
                .instances
                .push(registration.instance.clone());
            effective.agent.checks.push(registration.checks.clone());
            let origin = format!("API registration {id}");
            sources.push(source(
                id.clone(),
                Source::Api,
                origin,
                &registration.instance,
            ));
        }
        self.effective = effective;
        self.sources = sources;
        self.prune_maintenance();
    }

    /// Drops the maintenance of instances that are gone (logged), once
    /// every source has been read (not while the instances folder's first
    /// scan is under way), and writes the file if that changed anything.
    fn prune_maintenance(&mut self) {
        if self.instances.as_ref().is_some_and(|i| !i.state.scanned()) {
            return;
        }
        let current: Vec<(String, String)> = (self.sources.iter())
            .map(|s| (s.id.clone(), s.identity.clone()))
            .collect();
        let before = self.local.maintenance.clone();
        for (identity, reason) in self.local.prune_maintenance(&current) {
            info!(%identity, %reason, "maintenance dropped: no such instance any more");
        }
        if self.local.maintenance != before
            && let Some(writer) = self.state_writer.as_ref()
        {
            writer.send_replace(self.local.maintenance.clone());
        }
    }

    /// The service label and registry key of the instance `id`, for log
    /// lines (empty when it is not known).
    pub(super) fn service_and_key(&self, id: &str) -> (String, String) {
        (self.effective.agent.instances.iter())
            .zip(&self.sources)
            .find(|(_, source)| source.id == id)
            .map(|(instance, source)| (instance.service_label(), source.key.clone()))
            .unwrap_or_default()
    }

    /// The 404 for an id no instance has, with the ids that exist.
    fn unknown_id(&self, id: &str) -> ApiReply {
        const SHOWN: usize = 20;
        let known: Vec<&str> = self.sources.iter().map(|s| s.id.as_str()).collect();
        let mut message = format!("no instance {id}; ");
        if known.is_empty() {
            message.push_str("the agent has no instances");
        } else {
            message.push_str("known ids (`ygg-agent instances`): ");
            message.push_str(&known[..known.len().min(SHOWN)].join(", "));
            if known.len() > SHOWN {
                message.push_str(&format!(" and {} more", known.len() - SHOWN));
            }
        }
        ApiReply {
            status: 404,
            body: serde_json::json!({"error": message, "known": known}),
        }
    }

    /// The registry keys held out of the target: a critical health check,
    /// maintenance, a drain, a missed TTL.
    pub(super) fn held_out(&self) -> BTreeSet<String> {
        let mut out = self.withheld.clone();
        for source in &self.sources {
            if self.local.held(&source.id, &source.identity).is_some() {
                out.insert(source.key.clone());
            }
        }
        out
    }

    /// The instances moved (an API registration or an instances file came
    /// or went): checks, plugin metadata and the target follow.
    pub(super) fn instances_moved(&mut self) {
        self.refresh_effective();
        self.set_checks();
        if let Some(plugins) = self.plugins.as_mut() {
            for per_instance in plugins.metadata.values_mut() {
                per_instance.retain(|key, _| self.services.contains_key(key));
            }
        }
        self.publish();
        self.start_round(None);
    }

    /// Handles one local API call (at once: nothing here waits).
    pub(super) fn api_call(&mut self, call: ApiCall) -> ApiReply {
        match call {
            ApiCall::List => ApiReply::ok(self.api_listing()),
            ApiCall::Register { id, registration } => self.api_register(id, *registration),
            ApiCall::Deregister { id } => {
                if let Some(entry) = self.local.api.remove(&id) {
                    let instance = &entry.registration.instance;
                    let key = record::registry_key(&self.config.registry.prefix, instance);
                    info!(%id, service = %instance.service_label(), %key, "API deregistration");
                    // Its maintenance and drain end with it.
                    let identity = local::identity(Source::Api, &id, instance);
                    self.local.drained.remove(&identity);
                    if self.local.maintenance.instances.remove(&identity).is_some()
                        && let Some(writer) = self.state_writer.as_ref()
                    {
                        writer.send_replace(self.local.maintenance.clone());
                    }
                    self.instances_moved();
                    return ApiReply::ok(serde_json::json!({"id": id, "deregistered": true}));
                }
                match self.sources.iter().find(|s| s.id == id) {
                    Some(other) => ApiReply::error(
                        409,
                        format!("{id} comes from {}: remove it there", other.origin),
                    ),
                    None => self.unknown_id(&id),
                }
            }
            ApiCall::Pass { id } => match self.local.pass(&id, Instant::now()) {
                Ok(back) => {
                    if back {
                        let (service, key) = self.service_and_key(&id);
                        info!(%id, %service, %key, "TTL passed again: instance back in rotation");
                        self.publish();
                    }
                    ApiReply::ok(serde_json::json!({"id": id, "passed": true}))
                }
                Err(why) if self.local.api.contains_key(&id) => {
                    ApiReply::error(409, format!("{id}: {why}"))
                }
                Err(why) => ApiReply::error(404, format!("{id}: {why}")),
            },
            ApiCall::Maintenance { id, reason } => self.api_maintenance(id, reason),
            ApiCall::Drain { id: Some(id) } => {
                let Some(source) = self.sources.iter().find(|s| s.id == id) else {
                    return self.unknown_id(&id);
                };
                let identity = source.identity.clone();
                let (service, key) = self.service_and_key(&id);
                info!(%id, %service, %key, "drain: deleting the key; out of rotation until its maintenance is ended");
                self.local.drained.insert(identity);
                self.publish();
                ApiReply::ok(serde_json::json!({"id": id, "drained": true}))
            }
            ApiCall::Drain { id: None } => {
                info!("drain: deleting every key; out of rotation until node maintenance is ended");
                self.local.node_drained = true;
                self.publish();
                ApiReply::ok(serde_json::json!({"id": null, "drained": true}))
            }
        }
    }

    pub(super) fn api_register(
        &mut self,
        id: String,
        registration: config::ApiInstance,
    ) -> ApiReply {
        let key = record::registry_key(&self.config.registry.prefix, &registration.instance);
        // The id of an instance from the config or a file (its key's last
        // segment) is not free: maintenance and drains go by id.
        if let Some(other) = self
            .sources
            .iter()
            .find(|s| s.id == id && s.source != Source::Api)
        {
            return ApiReply::error(409, format!("the id {id} is taken by {}", other.origin));
        }
        let holder = self
            .sources
            .iter()
            .find(|s| s.key == key && !(s.source == Source::Api && s.id == id));
        if let Some(holder) = holder {
            return ApiReply::error(
                409,
                format!(
                    "the same instance as {} (key {key}): refused",
                    holder.origin
                ),
            );
        }
        let ttl = registration.ttl;
        let replaced = self.local.api.contains_key(&id);
        info!(%id, %key, service = %registration.instance.service_label(), ?ttl, replaced, "API registration");
        self.local
            .register(id.clone(), registration, Instant::now());
        self.instances_moved();
        ApiReply::ok(serde_json::json!({"id": id, "key": key, "replaced": replaced}))
    }

    /// Maintenance on (`reason`) or off, for `id` or the node; persisted.
    pub(super) fn api_maintenance(
        &mut self,
        id: Option<String>,
        reason: Option<String>,
    ) -> ApiReply {
        // Kept by identity, so it outlives a version bump (`local::identity`).
        let identity = match &id {
            Some(id) => match self.sources.iter().find(|s| s.id == *id) {
                Some(source) => Some(source.identity.clone()),
                None => return self.unknown_id(id),
            },
            None => None,
        };
        let maintenance = &mut self.local.maintenance;
        match (&identity, &reason) {
            (Some(identity), Some(reason)) => {
                maintenance
                    .instances
                    .insert(identity.clone(), reason.clone());
            }
            (Some(identity), None) => {
                maintenance.instances.remove(identity);
                self.local.drained.remove(identity);
            }
            (None, Some(reason)) => maintenance.node = Some(reason.clone()),
            (None, None) => {
                maintenance.node = None;
                self.local.node_drained = false;
            }
        }
        match (&id, &reason) {
            (Some(id), reason) => {
                let (service, key) = self.service_and_key(id);
                match reason {
                    Some(reason) => {
                        info!(%id, %service, %key, %reason, "maintenance on: out of rotation")
                    }
                    None => info!(%id, %service, %key, "maintenance off"),
                }
            }
            (None, Some(reason)) => {
                info!(instance = "the node", %reason, "maintenance on: out of rotation")
            }
            (None, None) => info!(instance = "the node", "maintenance off"),
        }
        if let Some(writer) = self.state_writer.as_ref() {
            writer.send_replace(self.local.maintenance.clone());
        }
        self.publish();
        ApiReply::ok(serde_json::json!({
            "id": id,
            "maintenance": reason.is_some(),
            "reason": reason,
            "persisted": self.state_writer.is_some(),
        }))
    }

    /// `GET /v1/instances`: every instance, its source and its state.
    pub(super) fn api_listing(&self) -> serde_json::Value {
        let instances: Vec<serde_json::Value> = self
            .effective
            .agent
            .instances
            .iter()
            .zip(&self.sources)
            .map(|(instance, source)| {
                let held = self.local.held(&source.id, &source.identity);
                let state = match &held {
                    Some(held) => held.state(),
                    None if self.withheld.contains(&source.key) => "withheld",
                    None => "registered",
                };
                let ttl = self.local.ttl(&source.id);
                let reason = match held {
                    Some(Held::Maintenance(reason)) => reason,
                    Some(Held::Drained) => {
                        "drained by the operator (`maint disable` ends it)".into()
                    }
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
                    "id": source.id,
                    "source": source.source.name(),
                    "origin": source.origin,
                    "service": instance.service_label(),
                    "key": source.key,
                    "state": state,
                    "reason": (!reason.is_empty()).then_some(reason),
                    "ttl": ttl.map(|ttl| format!("{ttl:?}")),
                    "identity": source.identity,
                })
            })
            .collect();
        // A refused file of the instances folder, with its first problem
        // (`check --config` prints them all).
        let refused = (self.instances.iter())
            .flat_map(|dir| dir.state.refused())
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
        let instances: Vec<serde_json::Value> = instances.into_iter().chain(refused).collect();
        serde_json::json!({
            "instances": instances,
            "maintenance": self.local.maintenance.node,
            "drained": self.local.node_drained,
        })
    }

    /// Where each configured instance's registry key comes from, for the
    /// message about an instance that another source holds too.
    pub(super) fn config_sources(&self, config: &Config) -> BTreeMap<String, String> {
        let path = self.config_path.display();
        config
            .agent
            .instances
            .iter()
            .enumerate()
            .map(|(i, instance)| {
                let key = record::registry_key(&config.registry.prefix, instance);
                (key, format!("{path} agent.instances[{i}]"))
            })
            .collect()
    }

    /// A finished scan of the instances folder: applied file by file; the
    /// instances in force, their checks and the target follow.
    pub(super) fn apply_instances_scan(
        &mut self,
        scan: DirScan,
    ) -> BTreeMap<PathBuf, instances_dir::FileOutcome> {
        let mut taken = self.config_sources(&self.config);
        for source in self.sources.iter().filter(|s| s.source == Source::Api) {
            taken.insert(source.key.clone(), source.origin.clone());
        }
        let Some(instances) = self.instances.as_mut() else {
            return BTreeMap::new();
        };
        if scan.dir != instances.dir {
            // From before a reload moved the folder: the new folder's own
            // scan is under way.
            return BTreeMap::new();
        }
        instances.scanning = false;
        if let Some(watch) = instances.watch.as_mut() {
            let added = scan.watch.difference(watch.folders()).count() > 0;
            for (folder, error) in watch.set(&scan.watch) {
                warn!(dir = %folder.display(), %error, "cannot watch this folder; instance file changes there apply on SIGHUP");
            }
            instances.again |= added;
        }
        let prefix = self.config.registry.prefix.clone();
        let outcomes = instances
            .state
            .apply(scan, |i| record::registry_key(&prefix, i), &taken);
        if std::mem::take(&mut instances.again) {
            instances.scan(&self.wiring);
        }
        let changed = outcomes
            .values()
            .any(|o| !matches!(o, instances_dir::FileOutcome::Refused(_)));
        if changed {
            self.instances_moved();
        }
        outcomes
    }

    /// Follows a reload's `agent.instancesDir` and `agent.checks`: a new
    /// folder or new check defaults start the folder over; otherwise, if
    /// the configured instances changed, the folder is scanned again (a
    /// file refused for an instance the config held may apply now).
    pub(super) fn apply_local_config(
        &mut self,
        old: &config::LocalConfig,
        instances_changed: bool,
    ) {
        let local = &self.config.agent.local;
        self.check_defaults
            .send_replace(local.check_defaults.clone());
        if local.api != old.api || local.state_dir != old.state_dir {
            warn!("agent.api and agent.stateDir changes apply when the agent restarts");
        }
        if local.instances_dir != old.instances_dir {
            self.instances = local
                .instances_dir
                .clone()
                .map(|dir| InstancesRuntime::new(dir, local.check_defaults.clone(), &self.wiring));
        } else if let Some(instances) = self.instances.as_mut() {
            // New defaults: the files' instances stay until the scan with
            // them applies (their checks change, not their registration).
            let defaults_changed = instances.defaults != local.check_defaults;
            instances.defaults = local.check_defaults.clone();
            if defaults_changed || instances_changed {
                instances.scan(&self.wiring);
            }
        }
    }

    /// Drain (`agent.drainDelay`): deletes every key while the lease stays
    /// alive, waits for etcd to confirm (up to `deadline`), then waits `delay`
    /// so callers' resolvers drop the endpoints before the agent goes. A second
    /// signal still exits at once (`cli.rs` handles it).
    pub(super) async fn drain_keys(
        registry: &RegistryHandle,
        config: &Config,
        deadline: Instant,
        delay: Duration,
    ) {
        let mut status = registry.status();
        registry.set_target(desired::Target {
            config: config.registry.clone(),
            records: BTreeMap::new(),
        });
        let deleted = status.wait_for(|s| s.desired == 0 && s.connected);
        match tokio::time::timeout_at(deadline, deleted).await {
            Ok(Ok(_)) => {
                info!(drain_delay = ?delay, "drain: every key deleted; waiting drainDelay before revoking the lease")
            }
            _ => {
                warn!(drain_delay = ?delay, "drain: etcd did not confirm the deletes within shutdownTimeout; waiting drainDelay anyway")
            }
        }
        tokio::time::sleep(delay).await;
    }
}
