//! What the local API changes, owned by the supervisor: API registrations
//! and their TTLs, maintenance (persisted through `state_dir`), drains.
//! Pure state and rules, no I/O: the supervisor turns "held out" into the
//! withheld set `desired::build` takes, and writes maintenance through the
//! state folder's writer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ApiInstance;
use crate::record::{INSTANCE_ID_KEY, Instance};
use crate::state_dir::Maintenance;

/// What maintenance and drains are kept by: an identity that survives a
/// version bump (the instance's key, a hash of its version too, does not).
/// An API registration: `api <id>`. An instance from the config or a file:
/// `<namespace>/<name>/<metadata.instance_id>` when it sets one, else
/// `<namespace>/<name> <scheme>://<address> …` (its endpoints, sorted),
/// so it follows the instance from one `version` to the next, and from the
/// config file to the instances folder.
pub fn identity(source: Source, id: &str, instance: &Instance) -> String {
    if source == Source::Api {
        return format!("api {id}");
    }
    let service = format!("{}/{}", instance.namespace, instance.name);
    if let Some(instance_id) = instance.metadata.get(INSTANCE_ID_KEY) {
        return format!("{service}/{instance_id}");
    }
    let mut endpoints: Vec<String> = (instance.endpoints.iter())
        .map(|e| format!("{}://{}", e.scheme, e.address))
        .collect();
    endpoints.sort();
    endpoints.dedup();
    format!("{service} {}", endpoints.join(" "))
}

/// Where an instance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    File,
    Api,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

/// One registration made through the API.
#[derive(Debug, Clone)]
pub struct ApiEntry {
    pub registration: ApiInstance,
    /// When the TTL runs out unless `pass` comes first.
    pub due: Option<Instant>,
    /// The TTL ran out: held out until the next `pass`.
    pub expired: bool,
}

/// Why an instance is out of rotation (besides its health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Maintenance(String),
    Drained,
    TtlExpired,
}

impl Held {
    pub fn state(&self) -> &'static str {
        match self {
            Held::Maintenance(_) => "maintenance",
            Held::Drained => "drained",
            Held::TtlExpired => "ttl-expired",
        }
    }
}

#[derive(Debug, Default)]
pub struct LocalState {
    /// API registrations by id; never persisted (README says why).
    pub api: BTreeMap<String, ApiEntry>,
    /// Maintenance in force (persisted), instances by [`identity`].
    pub maintenance: Maintenance,
    /// Instances drained, by [`identity`], until maintenance ends or the
    /// agent stops.
    pub drained: BTreeSet<String>,
    pub node_drained: bool,
}

impl LocalState {
    pub fn new(maintenance: Maintenance) -> LocalState {
        LocalState {
            maintenance,
            ..LocalState::default()
        }
    }

    /// Registers (or replaces) `id`; its TTL starts now, a drain of it ends.
    pub fn register(&mut self, id: String, registration: ApiInstance, now: Instant) {
        let due = registration.ttl.map(|ttl| now + ttl);
        self.drained
            .remove(&identity(Source::Api, &id, &registration.instance));
        self.api.insert(
            id,
            ApiEntry {
                registration,
                due,
                expired: false,
            },
        );
    }

    /// `pass` for `id`: its TTL starts again. `Ok(true)` when it was
    /// expired (and is back). `Err`: not registered here, or no TTL.
    pub fn pass(&mut self, id: &str, now: Instant) -> Result<bool, &'static str> {
        let entry = self
            .api
            .get_mut(id)
            .ok_or("not registered through the API")?;
        let ttl = entry.registration.ttl.ok_or("registered without a ttl")?;
        entry.due = Some(now + ttl);
        Ok(std::mem::take(&mut entry.expired))
    }

    /// The next TTL to run out.
    pub fn next_due(&self) -> Option<Instant> {
        self.api
            .values()
            .filter(|e| !e.expired)
            .filter_map(|e| e.due)
            .min()
    }

    /// Marks every TTL run out by `now`; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        for (id, entry) in &mut self.api {
            if !entry.expired && entry.due.is_some_and(|due| due <= now) {
                entry.expired = true;
                expired.push(id.clone());
            }
        }
        expired
    }

    /// Why the instance `id` (with this [`identity`]) is out of rotation,
    /// if it is. Maintenance first (it outlives the rest), then a drain,
    /// then a missed TTL.
    pub fn held(&self, id: &str, identity: &str) -> Option<Held> {
        if let Some(reason) = self.maintenance.instances.get(identity) {
            return Some(Held::Maintenance(reason.clone()));
        }
        if let Some(reason) = &self.maintenance.node {
            return Some(Held::Maintenance(reason.clone()));
        }
        if self.node_drained || self.drained.contains(identity) {
            return Some(Held::Drained);
        }
        self.api
            .get(id)
            .filter(|e| e.expired)
            .map(|_| Held::TtlExpired)
    }

    /// Keeps the maintenance entries of instances that exist; returns the
    /// ones dropped (identity, reason). `current` holds every instance's
    /// (id, identity). An entry written by an older agent under an id
    /// that is still in use moves to that instance's identity; an entry of
    /// an API registration is kept while none is registered (after a
    /// restart the app registers again, and stays in maintenance).
    pub fn prune_maintenance(&mut self, current: &[(String, String)]) -> Vec<(String, String)> {
        let entries = std::mem::take(&mut self.maintenance.instances);
        let mut dropped = Vec::new();
        for (held, reason) in entries {
            let known = current
                .iter()
                .find(|(id, identity)| *identity == held || *id == held);
            match known {
                Some((_, identity)) => {
                    self.maintenance.instances.insert(identity.clone(), reason);
                }
                None if held.starts_with("api ") => {
                    self.maintenance.instances.insert(held, reason);
                }
                None => dropped.push((held, reason)),
            }
        }
        dropped
    }

    /// The TTL of `id`, if it has one.
    pub fn ttl(&self, id: &str) -> Option<Duration> {
        self.api.get(id).and_then(|e| e.registration.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(ttl: Option<u64>) -> ApiInstance {
        ApiInstance {
            instance: Instance::seed_example(),
            checks: Vec::new(),
            ttl: ttl.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_ttl_holds_the_instance_until_the_next_pass() {
        let mut state = LocalState::default();
        let start = Instant::now();
        state.register("app".into(), registration(Some(15)), start);
        state.register("plain".into(), registration(None), start);
        assert_eq!(state.next_due(), Some(start + Duration::from_secs(15)));
        assert_eq!(state.pass("plain", start), Err("registered without a ttl"));
        assert_eq!(
            state.pass("nobody", start),
            Err("not registered through the API")
        );

        // Passing in time pushes the deadline.
        let t = start + Duration::from_secs(10);
        assert_eq!(state.pass("app", t), Ok(false));
        assert!(state.expire(start + Duration::from_secs(20)).is_empty());
        assert_eq!(state.held("app", "api app"), None);

        // Missing it holds the instance out, once.
        let late = t + Duration::from_secs(15);
        assert_eq!(state.expire(late), ["app"]);
        assert!(state.expire(late).is_empty());
        assert_eq!(state.held("app", "api app"), Some(Held::TtlExpired));
        assert_eq!(state.next_due(), None);
        assert_eq!(state.pass("app", late), Ok(true));
        assert_eq!(state.held("app", "api app"), None);
    }

    #[test]
    fn maintenance_outranks_a_drain_and_a_new_registration_ends_the_drain() {
        let mut state = LocalState::default();
        let now = Instant::now();
        state.register("a".into(), registration(None), now);
        state.drained.insert("api a".into());
        assert_eq!(state.held("a", "api a"), Some(Held::Drained));
        state
            .maintenance
            .instances
            .insert("api a".into(), "deploy".into());
        assert_eq!(
            state.held("a", "api a"),
            Some(Held::Maintenance("deploy".into()))
        );
        state.maintenance.instances.clear();
        state.register("a".into(), registration(None), now);
        assert_eq!(state.held("a", "api a"), None);
        state.maintenance.node = Some("kernel".into());
        assert_eq!(
            state.held("other", "api other"),
            Some(Held::Maintenance("kernel".into()))
        );
    }

    #[test]
    fn the_identity_survives_a_version_bump_but_not_a_new_address() {
        let seed = Instance::seed_example();
        let id = crate::record::instance_key(&seed);
        let kept = identity(Source::Config, &id, &seed);
        assert_eq!(
            kept,
            "default/example-registry-server grpc://127.0.0.1:54321 http://127.0.0.1:54321"
        );
        let mut bumped = seed.clone();
        bumped.version = "1.0.1".into();
        let bumped_id = crate::record::instance_key(&bumped);
        assert_ne!(bumped_id, id, "the id (key) changes with the version");
        assert_eq!(identity(Source::File, &bumped_id, &bumped), kept);
        let mut moved = seed.clone();
        moved.endpoints[0].address = "127.0.0.1:54322".into();
        assert_ne!(identity(Source::Config, &id, &moved), kept);
        let mut named = seed.clone();
        named
            .metadata
            .insert(INSTANCE_ID_KEY.into(), "web-1".into());
        assert_eq!(
            identity(Source::Config, "web-1", &named),
            "default/example-registry-server/web-1"
        );
        assert_eq!(identity(Source::Api, "app", &seed), "api app");
    }

    #[test]
    fn stale_maintenance_is_dropped_and_old_ids_move_to_the_identity() {
        let mut state = LocalState::default();
        for (held, reason) in [
            ("5b51", "by the old id"),
            ("default/gone 127.0.0.1:1", "stale"),
            ("api app", "waits for the app"),
            ("default/kept grpc://127.0.0.1:2", "kept"),
        ] {
            state
                .maintenance
                .instances
                .insert(held.into(), reason.into());
        }
        let current = [
            (
                "5b51".to_string(),
                "default/seed grpc://127.0.0.1:3".to_string(),
            ),
            (
                "e0f1".to_string(),
                "default/kept grpc://127.0.0.1:2".to_string(),
            ),
        ];
        let dropped = state.prune_maintenance(&current);
        assert_eq!(
            dropped,
            [("default/gone 127.0.0.1:1".to_string(), "stale".to_string())]
        );
        let kept: Vec<(&str, &str)> = (state.maintenance.instances.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("api app", "waits for the app"),
                ("default/kept grpc://127.0.0.1:2", "kept"),
                ("default/seed grpc://127.0.0.1:3", "by the old id"),
            ]
        );
    }
}
