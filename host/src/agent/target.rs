//! The target: what the registry actor is told to make true. The
//! [`Publisher`] owns the registry's handle, the `minRewriteInterval`
//! throttle, and whether the target is dirty: every change marks it, and
//! it is built and handed over once at the end of a burst of events (or
//! every [`MAX_BURST`] events of a longer one), not once per change.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::health::Health;
use super::instances::Instances;
use super::plugins::Plugins;
use crate::desired::{Clash, DesiredRecord, PluginMetadata, Target, Throttle};
use crate::registry::RegistryHandle;

/// A burst longer than this many events publishes anyway, so a steady
/// stream cannot hold the target back.
const MAX_BURST: u32 = 256;

/// While changes keep coming, at most one publish per this gap: a publish
/// hands the registry a whole target, which it compares with what it
/// holds, so a stream of API calls answered one at a time (each ending a
/// "burst" of one) would otherwise cost a pass over every record per call.
/// A change after a quiet spell still goes out at once.
const MIN_GAP: Duration = Duration::from_millis(1);

/// Builds the record of one instance by registry key (`None`: it has
/// none now).
pub(super) type OneRecord<'a> = &'a dyn Fn(&str) -> Option<DesiredRecord>;

/// The registry and what goes to it.
pub(super) struct Publisher {
    registry: RegistryHandle,
    /// Holds back plugin-only rewrites (`minRewriteInterval`).
    rewrites: Throttle,
    /// When the earliest held-back rewrite may go out.
    pub rewrite_due: Option<Instant>,
    /// What changed since the last publish.
    dirty: Option<Dirty>,
    /// The last target built (before the throttle), so a change of a few
    /// instances rebuilds only their records.
    last: Option<Target>,
    /// When the last target was handed over.
    last_sent: Option<Instant>,
}

/// What changed since the last publish, and how many events ago.
#[derive(Debug, Default)]
struct Dirty {
    events: u32,
    /// Anything may have changed: build it all.
    all: bool,
    /// These instances' records changed (by registry key).
    keys: BTreeSet<String>,
}

impl Publisher {
    pub fn new(registry: RegistryHandle, min_rewrite_interval: Option<Duration>) -> Publisher {
        Publisher {
            registry,
            rewrites: Throttle::new(min_rewrite_interval),
            rewrite_due: None,
            dirty: None,
            last: None,
            last_sent: None,
        }
    }

    /// The registry's handle.
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// The registry's handle, for the shutdown.
    pub fn into_registry(self) -> RegistryHandle {
        self.registry
    }

    pub fn set_min_rewrite_interval(&mut self, min: Option<Duration>) {
        self.rewrites.set_min(min);
    }

    /// Anything the target is built from may have changed.
    pub fn mark(&mut self) {
        self.dirty.get_or_insert_with(Dirty::default).all = true;
    }

    /// The records of these instances (by registry key) may have changed.
    pub fn mark_keys(&mut self, keys: impl IntoIterator<Item = String>) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_some() {
            self.dirty
                .get_or_insert_with(Dirty::default)
                .keys
                .extend(keys);
        }
    }

    /// One more event handled; true when the target is dirty and the
    /// burst is over (`more`: another event is waiting) and the last
    /// publish at least [`MIN_GAP`] ago, or the burst is long enough.
    pub fn due(&mut self, more: bool) -> bool {
        let gap_over = self.gap_over(Instant::now());
        let Some(dirty) = self.dirty.as_mut() else {
            return false;
        };
        dirty.events += 1;
        dirty.events >= MAX_BURST || (!more && gap_over)
    }

    /// When a dirty target may go out (`None`: it is not dirty).
    pub fn publish_at(&self) -> Option<Instant> {
        self.dirty.as_ref()?;
        Some(
            self.last_sent
                .map_or_else(Instant::now, |sent| sent + MIN_GAP),
        )
    }

    fn gap_over(&self, now: Instant) -> bool {
        self.last_sent.is_none_or(|sent| now >= sent + MIN_GAP)
    }

    /// Hands the target to the registry (through the throttle). When only
    /// some instances changed and `one` is given (the record of one
    /// instance by key, `None`: it has none now), only theirs are rebuilt;
    /// otherwise `all()` builds it all and its clashes are returned.
    pub fn publish(
        &mut self,
        all: impl FnOnce() -> (Target, Vec<Clash>),
        one: Option<OneRecord<'_>>,
    ) -> Option<Vec<Clash>> {
        let dirty = self.dirty.take().unwrap_or_default();
        let (target, clashes) = match (one, self.last.as_mut()) {
            (Some(one), Some(last)) if !dirty.all => {
                let mut changed = false;
                for key in &dirty.keys {
                    let record = one(key);
                    if last.records.get(key) == record.as_ref() {
                        continue;
                    }
                    changed = true;
                    match record {
                        Some(record) => last.records.insert(key.clone(), record),
                        None => last.records.remove(key),
                    };
                }
                if !changed {
                    // Nothing changed since the last target built.
                    return None;
                }
                (last.clone(), None)
            }
            _ => {
                let (target, clashes) = all();
                self.last = Some(target.clone());
                (target, Some(clashes))
            }
        };
        let now = Instant::now();
        self.last_sent = Some(now);
        let (target, due) = self.rewrites.apply(now, target);
        self.rewrite_due = due;
        self.registry.set_target(target);
        clashes
    }
}

/// The target as everything stands now, and the plugin clashes in it.
pub(super) fn build(
    instances: &Instances,
    health: &Health,
    plugins: Option<&Plugins>,
) -> (Target, Vec<Clash>) {
    let empty = PluginMetadata::new();
    let metadata = plugins.map_or(&empty, Plugins::metadata);
    let held_out = instances.held_out(health.withheld());
    crate::desired::build(instances.effective(), metadata, &held_out)
}

/// The record of one instance by registry key, built alone (no plugin
/// metadata); `None` while it is held out or gone.
pub(super) fn build_one(
    instances: &Instances,
    health: &Health,
    key: &str,
) -> Option<DesiredRecord> {
    if instances.is_held_out(key, health.withheld()) {
        return None;
    }
    let (instance, _) = instances.find(key)?;
    let none = PluginMetadata::new();
    crate::desired::instance_record(instances.effective(), instance, key, &none, &mut Vec::new())
}

/// How many records `new` adds to `old`, removes from it, and changes.
pub(super) fn count_changes(old: &Target, new: &Target) -> (usize, usize, usize) {
    let added = (new.records.keys())
        .filter(|k| !old.records.contains_key(*k))
        .count();
    let removed = (old.records.keys())
        .filter(|k| !new.records.contains_key(*k))
        .count();
    let changed = (new.records.iter())
        .filter(|(k, r)| old.records.get(*k).is_some_and(|o| o != *r))
        .count();
    (added, removed, changed)
}
