//! The target: what the registry actor is told to make true. The
//! [`Publisher`] owns the registry's handle, the `minRewriteInterval`
//! throttle, and whether the target is dirty: every change marks it, and
//! it is built and handed over once at the end of a burst of events (or
//! every [`MAX_BURST`] events of a longer one), not once per change.

use std::time::Duration;

use tokio::time::Instant;

use crate::desired::{Clash, Target, Throttle};
use crate::registry::RegistryHandle;

/// A burst longer than this many events publishes anyway, so a steady
/// stream cannot hold the target back.
const MAX_BURST: u32 = 256;

/// The registry and what goes to it.
pub(super) struct Publisher {
    registry: RegistryHandle,
    /// Holds back plugin-only rewrites (`minRewriteInterval`).
    rewrites: Throttle,
    /// When the earliest held-back rewrite may go out.
    pub rewrite_due: Option<Instant>,
    /// Something changed what the target is built from since the last
    /// publish; how many events ago.
    dirty: Option<u32>,
}

impl Publisher {
    pub fn new(registry: RegistryHandle, min_rewrite_interval: Option<Duration>) -> Publisher {
        Publisher {
            registry,
            rewrites: Throttle::new(min_rewrite_interval),
            rewrite_due: None,
            dirty: None,
        }
    }

    /// The registry's handle, for the shutdown.
    pub fn into_registry(self) -> RegistryHandle {
        self.registry
    }

    pub fn set_min_rewrite_interval(&mut self, min: Option<Duration>) {
        self.rewrites.set_min(min);
    }

    /// What the target is built from changed.
    pub fn mark(&mut self) {
        self.dirty.get_or_insert(0);
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// One more event handled; true when the target is dirty and the
    /// burst is over (`more`: another event is waiting) or long enough.
    pub fn due(&mut self, more: bool) -> bool {
        let Some(events) = self.dirty.as_mut() else {
            return false;
        };
        *events += 1;
        *events >= MAX_BURST || !more
    }

    /// Hands `build()`'s target to the registry (through the throttle)
    /// and returns its clashes.
    pub fn publish(&mut self, build: impl FnOnce() -> (Target, Vec<Clash>)) -> Vec<Clash> {
        self.dirty = None;
        let (target, clashes) = build();
        let (target, due) = self.rewrites.apply(Instant::now(), target);
        self.rewrite_due = due;
        self.registry.set_target(target);
        clashes
    }
}
