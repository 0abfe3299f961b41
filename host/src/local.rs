//! What the local API changes, owned by the supervisor: API registrations
//! and their TTLs, maintenance (persisted through `state_dir`), drains.
//! Pure state and rules, no I/O: the supervisor turns "held out" into the
//! withheld set `desired::build` takes, and writes maintenance through the
//! state folder's writer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ApiInstance;
use crate::state_dir::Maintenance;

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
    /// Maintenance in force (persisted).
    pub maintenance: Maintenance,
    /// Instances drained by id, until maintenance ends or the agent stops.
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
        self.drained.remove(&id);
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

    /// Why the instance `id` is out of rotation, if it is. Maintenance
    /// first (it outlives the rest), then a drain, then a missed TTL.
    pub fn held(&self, id: &str) -> Option<Held> {
        if let Some(reason) = self.maintenance.instances.get(id) {
            return Some(Held::Maintenance(reason.clone()));
        }
        if let Some(reason) = &self.maintenance.node {
            return Some(Held::Maintenance(reason.clone()));
        }
        if self.node_drained || self.drained.contains(id) {
            return Some(Held::Drained);
        }
        self.api
            .get(id)
            .filter(|e| e.expired)
            .map(|_| Held::TtlExpired)
    }

    /// The TTL of `id`, if it has one.
    pub fn ttl(&self, id: &str) -> Option<Duration> {
        self.api.get(id).and_then(|e| e.registration.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Instance;

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
        assert_eq!(state.held("app"), None);

        // Missing it holds the instance out, once.
        let late = t + Duration::from_secs(15);
        assert_eq!(state.expire(late), ["app"]);
        assert!(state.expire(late).is_empty());
        assert_eq!(state.held("app"), Some(Held::TtlExpired));
        assert_eq!(state.next_due(), None);
        assert_eq!(state.pass("app", late), Ok(true));
        assert_eq!(state.held("app"), None);
    }

    #[test]
    fn maintenance_outranks_a_drain_and_a_new_registration_ends_the_drain() {
        let mut state = LocalState::default();
        let now = Instant::now();
        state.register("a".into(), registration(None), now);
        state.drained.insert("a".into());
        assert_eq!(state.held("a"), Some(Held::Drained));
        state
            .maintenance
            .instances
            .insert("a".into(), "deploy".into());
        assert_eq!(state.held("a"), Some(Held::Maintenance("deploy".into())));
        state.maintenance.instances.clear();
        state.register("a".into(), registration(None), now);
        assert_eq!(state.held("a"), None);
        state.maintenance.node = Some("kernel".into());
        assert_eq!(
            state.held("other"),
            Some(Held::Maintenance("kernel".into()))
        );
    }
}
