//! The target: what the registry actor is told to make true. The
//! [`Publisher`] owns the registry's handle, the `minRewriteInterval`
//! throttle, and whether the target is dirty: every change marks it, and
//! it is built and handed over once at the end of a burst of events (or
//! every [`MAX_BURST`] events of a longer one), not once per change.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::desired::{Clash, DesiredRecord, Target, Throttle};
use crate::registry::RegistryHandle;

/// A burst longer than this many events publishes anyway, so a steady
/// stream cannot hold the target back.
const MAX_BURST: u32 = 256;

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

    pub fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// One more event handled; true when the target is dirty and the
    /// burst is over (`more`: another event is waiting) or long enough.
    pub fn due(&mut self, more: bool) -> bool {
        let Some(dirty) = self.dirty.as_mut() else {
            return false;
        };
        dirty.events += 1;
        dirty.events >= MAX_BURST || !more
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
                for key in &dirty.keys {
                    match one(key) {
                        Some(record) => last.records.insert(key.clone(), record),
                        None => last.records.remove(key),
                    };
                }
                (last.clone(), None)
            }
            _ => {
                let (target, clashes) = all();
                self.last = Some(target.clone());
                (target, Some(clashes))
            }
        };
        let (target, due) = self.rewrites.apply(Instant::now(), target);
        self.rewrite_due = due;
        self.registry.set_target(target);
        clashes
    }
}
