//! The instances in force: the config's, the instances folder's and the
//! local API's, each with where it comes from ([`InstanceSource`]), and
//! what the operator holds out ([`LocalState`]: maintenance, drains,
//! missed TTLs). Every method returns at once and says what [`Moved`];
//! the supervisor makes the checks, the plugins and the target follow.

mod folder;
mod parts;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::input::{FolderInput, Scanner};
use crate::api::{self, ApiChange, ApiReply, ApiServer};
use crate::config::{self, Config};
use crate::handover::{HandedRegistration, HandedSocket, HandedTcp};
use crate::instances_dir::{self, DirScan, InstancesDir};
use crate::local::{self, LocalState, Source};
use crate::record;
use crate::state_dir::Maintenance;
use folder::InstancesFolder;
pub(super) use parts::LocalParts;

/// What a change to the instances moved: the supervisor updates only
/// that (the instance, its checks, its records) unless `all`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use]
pub(super) struct Moved {
    /// Anything may have moved (a reload, a folder scan, node-wide
    /// maintenance or drain).
    pub all: bool,
    /// Instances that came, went or changed, by registry key.
    pub instances: BTreeSet<String>,
    /// Instances whose held-out state may have changed, by registry key.
    pub held_out: BTreeSet<String>,
}

impl Moved {
    fn all() -> Moved {
        Moved {
            all: true,
            ..Moved::default()
        }
    }

    fn instances(keys: impl IntoIterator<Item = String>) -> Moved {
        Moved {
            instances: keys.into_iter().collect(),
            ..Moved::default()
        }
    }

    fn held_out(keys: impl IntoIterator<Item = String>) -> Moved {
        Moved {
            held_out: keys.into_iter().collect(),
            ..Moved::default()
        }
    }
}

/// Where one instance in force comes from.
#[derive(Debug, Clone)]
pub(super) struct InstanceSource {
    /// Its id in the local API: the API registration's id, else the last
    /// segment of its key.
    id: String,
    kind: Source,
    /// `agent.yaml agent.instances[0]`, `…/a.yaml [2]`, `API registration app-1`.
    origin: String,
    key: String,
    /// What its maintenance and drains are kept by (`local::identity`).
    identity: String,
}

impl InstanceSource {
    /// What its maintenance and drains are kept by (`local::identity`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> Source {
        self.kind
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The instances in force and what holds some of them out.
pub(super) struct Instances {
    /// The running config with the instances of every other source (the
    /// instances folder, the API) appended, checks beside them: what the
    /// target, the checks, the plugins' rounds and `/status` are built
    /// from.
    effective: Config,
    /// Where each instance of `effective` comes from, index for index.
    sources: Vec<InstanceSource>,
    /// The config file, for the origin of its instances.
    config_path: PathBuf,
    folder: Option<InstancesFolder>,
    /// API registrations, maintenance, drains.
    local: LocalState,
    api: Option<ApiServer>,
    /// `agent.checks` for the API server's validation of registrations
    /// (the API server holds the receiver).
    check_defaults: watch::Sender<config::CheckTiming>,
    /// Writes maintenance to the state folder, if there is one (the
    /// writer task holds the receiver).
    state_writer: Option<watch::Sender<Maintenance>>,
    /// The JSON each API registration was made with, by id: what an
    /// upgrade hands over.
    api_bodies: BTreeMap<String, String>,
}

impl Instances {
    /// The instances of `config` (and of its instances folder, whose first
    /// scan starts now).
    pub fn new(
        config: &Config,
        config_path: PathBuf,
        parts: LocalParts,
        scanner: &Scanner,
    ) -> Instances {
        let local = &config.agent.local;
        let folder = local
            .instances_dir
            .clone()
            .map(|dir| InstancesFolder::new(dir, local.check_defaults.clone(), scanner));
        let mut instances = Instances {
            effective: config.clone(),
            sources: Vec::new(),
            config_path,
            folder,
            local: LocalState {
                drained: parts.drained,
                node_drained: parts.node_drained,
                ..LocalState::new(parts.maintenance)
            },
            api: parts.api,
            check_defaults: parts.check_defaults,
            state_writer: parts.state_writer,
            api_bodies: BTreeMap::new(),
        };
        instances.refresh(config);
        instances.take_handed(parts.api_registrations, config);
        instances
    }

    /// The API registrations an upgrade handed over, registered again
    /// from their JSON (with this config's rules) with their TTLs where
    /// they stood.
    fn take_handed(&mut self, handed: Vec<HandedRegistration>, config: &Config) {
        let now = Instant::now();
        let defaults = &config.agent.local.check_defaults;
        for registration in handed {
            let HandedRegistration {
                id,
                body,
                ttl_left_ms,
                expired,
            } = registration;
            let parsed = match api::body::registration(body.as_bytes(), defaults) {
                Ok(parsed) => parsed,
                Err(problems) => {
                    warn!(%id, problems = %problems.join("; "), "upgrade: an API registration the previous process held is refused now; its app must register again");
                    continue;
                }
            };
            let (reply, _) = self.register(id.clone(), parsed, body, config);
            if reply.status != 200 {
                warn!(%id, answer = %reply.body, "upgrade: an API registration the previous process held is refused now");
                continue;
            }
            if let Some(entry) = self.local.api.get_mut(&id) {
                if entry.due.is_some() {
                    entry.due = Some(now + Duration::from_millis(ttl_left_ms.unwrap_or(0)));
                }
                entry.expired = expired;
            }
        }
    }

    /// The API registrations, to hand over on an upgrade.
    pub fn registrations_handed(&self) -> Vec<HandedRegistration> {
        let now = Instant::now();
        (self.local.api.iter())
            .filter_map(|(id, entry)| {
                Some(HandedRegistration {
                    id: id.clone(),
                    body: self.api_bodies.get(id)?.clone(),
                    ttl_left_ms: (entry.due)
                        .map(|due| due.saturating_duration_since(now).as_millis() as u64),
                    expired: entry.expired,
                })
            })
            .collect()
    }

    /// Where each instance of [`Instances::effective`] came from, in the
    /// same order.
    pub fn sources(&self) -> &[InstanceSource] {
        &self.sources
    }

    /// The operator's and the apps' holds (maintenance, drains, TTLs).
    pub fn local(&self) -> &LocalState {
        &self.local
    }

    /// The instances folder's files (and the refused ones), when one is
    /// configured.
    pub fn refused(&self) -> Option<&InstancesDir> {
        self.folder.as_ref().map(|folder| &folder.state)
    }

    /// The running config with every other source's instances appended.
    pub fn effective(&self) -> &Config {
        &self.effective
    }

    /// The instances folder has been scanned (or there is none).
    pub fn scanned(&self) -> bool {
        self.folder.as_ref().is_none_or(|f| f.state.scanned())
    }

    /// The next TTL of an API registration to run out.
    pub fn next_due(&self) -> Option<Instant> {
        self.local.next_due()
    }

    pub fn input(&mut self) -> Option<&mut FolderInput> {
        self.folder.as_mut().map(|f| &mut f.input)
    }

    /// Scans the instances folder (SIGHUP, or its changes settled).
    pub fn scan(&mut self, scanner: &Scanner) {
        if let Some(folder) = self.folder.as_mut() {
            folder.scan(scanner);
        }
    }

    /// Stops the API server (its socket file goes) and the folder's watch.
    pub fn stop_inputs(&mut self) {
        self.api = None;
        self.folder = None;
    }

    /// The local API's listeners, to hand over on an upgrade.
    pub fn api_handed(&self) -> (Option<HandedSocket>, Option<HandedTcp>) {
        match self.api.as_ref().map(ApiServer::handed) {
            Some((socket, tcp)) => (Some(socket), tcp),
            None => (None, None),
        }
    }

    /// An upgrade handed the socket over: stopping leaves its file.
    pub fn keep_socket_file(&mut self) {
        if let Some(api) = self.api.as_mut() {
            api.keep_socket_file();
        }
    }

    /// Stops the state writer (it writes what it holds first).
    pub fn stop_writer(&mut self) {
        self.state_writer = None;
    }

    /// The registry keys held out of the target: `withheld` (a critical
    /// health check) and what the operator holds out (maintenance, a
    /// drain, a missed TTL).
    pub fn held_out(&self, withheld: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = withheld.clone();
        for source in &self.sources {
            if self.local.held(&source.id, &source.identity).is_some() {
                out.insert(source.key.clone());
            }
        }
        out
    }

    /// Rebuilds `effective` and `sources` from the running `config` and
    /// every other source.
    fn refresh(&mut self, config: &Config) {
        let mut effective = config.clone();
        let prefix = &config.registry.prefix;
        let source = |id: String, kind: Source, origin: String, instance: &record::Instance| {
            InstanceSource {
                identity: local::identity(kind, &id, instance),
                id,
                kind,
                origin,
                key: record::registry_key(prefix, instance),
            }
        };
        let path = self.config_path.display();
        let mut sources: Vec<InstanceSource> = (config.agent.instances.iter().enumerate())
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
        if let Some(folder) = self.folder.as_ref() {
            for (file, i, instance, checks) in folder.state.instances() {
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

    /// The instances of `config` that another source (the instances
    /// folder, the API) already holds: the later source, the config, is
    /// refused.
    pub fn clashes(&self, config: &Config) -> Vec<String> {
        let ours = self.config_sources(config);
        self.effective
            .agent
            .instances
            .iter()
            .zip(&self.sources)
            .filter(|(_, source)| source.kind != Source::Config)
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

    /// Where each configured instance's registry key comes from, for the
    /// message about an instance that another source holds too.
    fn config_sources(&self, config: &Config) -> BTreeMap<String, String> {
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

    /// Follows a new running `config`: its instances, and its
    /// `agent.instancesDir` and `agent.checks` (a new folder or new check
    /// defaults start the folder over; otherwise, if `keys_moved`, the
    /// folder is scanned again: a file refused for an instance the config
    /// held may apply now).
    pub fn reconfigure(
        &mut self,
        config: &Config,
        old: &config::LocalConfig,
        keys_moved: bool,
        scanner: &Scanner,
    ) {
        let local = &config.agent.local;
        self.check_defaults
            .send_replace(local.check_defaults.clone());
        if local.api != old.api || local.state_dir != old.state_dir {
            warn!("agent.api and agent.stateDir changes apply when the agent restarts");
        }
        if local.instances_dir != old.instances_dir {
            self.folder = local
                .instances_dir
                .clone()
                .map(|dir| InstancesFolder::new(dir, local.check_defaults.clone(), scanner));
        } else if let Some(folder) = self.folder.as_mut() {
            // New defaults: the files' instances stay until the scan with
            // them applies (their checks change, not their registration).
            let defaults_changed = folder.defaults != local.check_defaults;
            folder.defaults = local.check_defaults.clone();
            if defaults_changed || keys_moved {
                folder.scan(scanner);
            }
        }
        self.refresh(config);
    }

    /// A finished scan of the instances folder, applied file by file.
    pub fn take_scan(&mut self, scan: DirScan, config: &Config, scanner: &Scanner) -> Moved {
        let mut taken = self.config_sources(config);
        for source in self.sources.iter().filter(|s| s.kind == Source::Api) {
            taken.insert(source.key.clone(), source.origin.clone());
        }
        let Some(folder) = self.folder.as_mut() else {
            return Moved::default();
        };
        if scan.dir != folder.dir {
            // From before a reload moved the folder: the new folder's own
            // scan is under way.
            return Moved::default();
        }
        if folder.input.finished(&scan.watch).is_some() {
            folder.scan(scanner);
        }
        let prefix = config.registry.prefix.clone();
        let outcomes = folder
            .state
            .apply(scan, |i| record::registry_key(&prefix, i), &taken);
        let changed = outcomes
            .values()
            .any(|o| !matches!(o, instances_dir::FileOutcome::Refused(_)));
        if !changed {
            return Moved::default();
        }
        self.refresh(config);
        Moved::all()
    }

    /// TTLs run out by now: their instances are held out.
    pub fn expire(&mut self) -> Moved {
        let expired = self.local.expire(Instant::now());
        for id in &expired {
            let (service, key) = self.service_and_key(id);
            warn!(%id, %service, %key, "TTL missed: instance withheld until its app passes again");
        }
        Moved::held_out(expired.iter().filter_map(|id| self.key_of(id)))
    }

    /// Handles one local API call that changes something (at once:
    /// nothing here waits). The listing is the supervisor's
    /// (`status::listing`), which reads the checks too.
    pub fn call(&mut self, call: ApiChange, config: &Config) -> (ApiReply, Moved) {
        match call {
            ApiChange::Register {
                id,
                registration,
                body,
            } => self.register(id, *registration, body, config),
            ApiChange::Deregister { id } => {
                if let Some(entry) = self.local.api.remove(&id) {
                    self.api_bodies.remove(&id);
                    let instance = &entry.registration.instance;
                    let key = record::registry_key(&config.registry.prefix, instance);
                    info!(%id, service = %instance.service_label(), %key, "API deregistration");
                    // Its maintenance and drain end with it.
                    let identity = local::identity(Source::Api, &id, instance);
                    self.local.drained.remove(&identity);
                    if self.local.maintenance.instances.remove(&identity).is_some()
                        && let Some(writer) = self.state_writer.as_ref()
                    {
                        writer.send_replace(self.local.maintenance.clone());
                    }
                    let key = self.remove_api(&id);
                    let reply = ApiReply::ok(serde_json::json!({"id": id, "deregistered": true}));
                    return (reply, Moved::instances(key));
                }
                let reply = match self.sources.iter().find(|s| s.id == id) {
                    Some(other) => ApiReply::error(
                        409,
                        format!("{id} comes from {}: remove it there", other.origin),
                    ),
                    None => self.unknown_id(&id),
                };
                (reply, Moved::default())
            }
            ApiChange::Pass { id } => match self.local.pass(&id, Instant::now()) {
                Ok(back) => {
                    let reply = ApiReply::ok(serde_json::json!({"id": id, "passed": true}));
                    if back {
                        let (service, key) = self.service_and_key(&id);
                        info!(%id, %service, %key, "TTL passed again: instance back in rotation");
                        return (reply, Moved::held_out(self.key_of(&id)));
                    }
                    (reply, Moved::default())
                }
                Err(why) if self.local.api.contains_key(&id) => (
                    ApiReply::error(409, format!("{id}: {why}")),
                    Moved::default(),
                ),
                Err(why) => (
                    ApiReply::error(404, format!("{id}: {why}")),
                    Moved::default(),
                ),
            },
            ApiChange::Maintenance { id, reason } => {
                let moved = match id.as_deref() {
                    Some(id) => Moved::held_out(self.key_of(id)),
                    None => Moved::all(),
                };
                (self.maintenance(id, reason), moved)
            }
            ApiChange::Drain { id: Some(id) } => {
                let Some(source) = self.sources.iter().find(|s| s.id == id) else {
                    return (self.unknown_id(&id), Moved::default());
                };
                let identity = source.identity.clone();
                let (service, key) = self.service_and_key(&id);
                info!(%id, %service, %key, "drain: deleting the key; out of rotation until its maintenance is ended");
                self.local.drained.insert(identity);
                let moved = Moved::held_out(self.key_of(&id));
                let reply = ApiReply::ok(serde_json::json!({"id": id, "drained": true}));
                (reply, moved)
            }
            ApiChange::Drain { id: None } => {
                info!("drain: deleting every key; out of rotation until node maintenance is ended");
                self.local.node_drained = true;
                let reply = ApiReply::ok(serde_json::json!({"id": null, "drained": true}));
                (reply, Moved::all())
            }
        }
    }

    /// The service label and registry key of the instance `id`, for log
    /// lines (empty when it is not known).
    fn service_and_key(&self, id: &str) -> (String, String) {
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

    /// Drops the maintenance of instances that are gone (logged), once
    /// every source has been read (not while the instances folder's first
    /// scan is under way), and writes the file if that changed anything.
    fn prune_maintenance(&mut self) {
        if self.folder.as_ref().is_some_and(|f| !f.state.scanned()) {
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

    /// The registry key of the instance with API id `id`.
    fn key_of(&self, id: &str) -> Option<String> {
        self.sources
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.key.clone())
    }

    /// The instance with registry key `key` and its checks.
    pub fn find(&self, key: &str) -> Option<(&record::Instance, &[config::CheckConfig])> {
        let at = self.sources.iter().position(|s| s.key == key)?;
        let agent = &self.effective.agent;
        Some((&agent.instances[at], &agent.checks[at]))
    }

    /// Whether the instance with registry key `key` is held out: `withheld`
    /// by a check, or by the operator or a missed TTL.
    pub fn is_held_out(&self, key: &str, withheld: &BTreeSet<String>) -> bool {
        withheld.contains(key)
            || self
                .sources
                .iter()
                .find(|s| s.key == key)
                .is_some_and(|s| self.local.held(&s.id, &s.identity).is_some())
    }

    /// Puts API registration `id` (key `key`) in force in place: the API's
    /// instances come last, by id, as `refresh` orders them. Returns the
    /// key it replaces, if another.
    fn upsert_api(&mut self, id: &str, key: &str) -> Option<String> {
        let registration = &self.local.api[id].registration;
        let source = InstanceSource {
            identity: local::identity(Source::Api, id, &registration.instance),
            id: id.to_string(),
            kind: Source::Api,
            origin: format!("API registration {id}"),
            key: key.to_string(),
        };
        let first = (self.sources.iter())
            .position(|s| s.kind == Source::Api)
            .unwrap_or(self.sources.len());
        let agent = &mut self.effective.agent;
        match self.sources[first..].binary_search_by(|s| s.id.as_str().cmp(id)) {
            Ok(i) => {
                let at = first + i;
                agent.instances[at] = registration.instance.clone();
                agent.checks[at] = registration.checks.clone();
                let old = std::mem::replace(&mut self.sources[at], source).key;
                (old != key).then_some(old)
            }
            Err(i) => {
                let at = first + i;
                agent.instances.insert(at, registration.instance.clone());
                agent.checks.insert(at, registration.checks.clone());
                self.sources.insert(at, source);
                None
            }
        }
    }

    /// Takes API registration `id` out of force; returns its key.
    fn remove_api(&mut self, id: &str) -> Option<String> {
        let at = (self.sources.iter()).position(|s| s.kind == Source::Api && s.id == id)?;
        self.effective.agent.instances.remove(at);
        self.effective.agent.checks.remove(at);
        Some(self.sources.remove(at).key)
    }

    fn register(
        &mut self,
        id: String,
        registration: config::ApiInstance,
        body: String,
        config: &Config,
    ) -> (ApiReply, Moved) {
        let key = record::registry_key(&config.registry.prefix, &registration.instance);
        // The id of an instance from the config or a file (its key's last
        // segment) is not free: maintenance and drains go by id.
        if let Some(other) = self
            .sources
            .iter()
            .find(|s| s.id == id && s.kind != Source::Api)
        {
            let reply = ApiReply::error(409, format!("the id {id} is taken by {}", other.origin));
            return (reply, Moved::default());
        }
        let holder = self
            .sources
            .iter()
            .find(|s| s.key == key && !(s.kind == Source::Api && s.id == id));
        if let Some(holder) = holder {
            let reply = ApiReply::error(
                409,
                format!(
                    "the same instance as {} (key {key}): refused",
                    holder.origin
                ),
            );
            return (reply, Moved::default());
        }
        let ttl = registration.ttl;
        let replaced = self.local.api.contains_key(&id);
        info!(%id, %key, service = %registration.instance.service_label(), ?ttl, replaced, "API registration");
        self.local
            .register(id.clone(), registration, Instant::now());
        self.api_bodies.insert(id.clone(), body);
        let old = self.upsert_api(&id, &key);
        let reply = ApiReply::ok(serde_json::json!({"id": id, "key": key, "replaced": replaced}));
        (reply, Moved::instances(old.into_iter().chain([key])))
    }

    /// Maintenance on (`reason`) or off, for `id` or the node; persisted.
    fn maintenance(&mut self, id: Option<String>, reason: Option<String>) -> ApiReply {
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
        ApiReply::ok(serde_json::json!({
            "id": id,
            "maintenance": reason.is_some(),
            "reason": reason,
            "persisted": self.state_writer.is_some(),
        }))
    }
}
