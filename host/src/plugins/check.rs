//! Check plugins (`ygg:agent-plugin@0.2.0`, world `check`): one loaded
//! plugin is a [`CheckPlugin`], shared by every check of kind `plugin`
//! naming it through [`CheckPlugins`], which the plugin host publishes on
//! a `watch` channel and the health checks read.
//!
//! Every call builds a fresh `Store` from the pre-instance and drops it at
//! the end: the call's sockets (and anything else it opened) are closed
//! then, and one instance's check never sees another's state. The store's
//! WASI context allows TCP connections to the call's resolved target
//! addresses and nothing else (see `PluginState::for_check`). The limits
//! are the metadata plugins': CPU budget and wall clock `timeout`, and
//! `memoryLimit`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::engine::PluginEngine;
use super::instance::PluginInstance;
use super::runner::{CallError, Limits, arm, guarded, new_store};
use super::state::PluginState;
use super::system;
use super::v0_2_0;

/// A check's output is cut to this many bytes (at a character boundary).
pub const MAX_CHECK_OUTPUT: usize = 256;
/// Calls of one check plugin running at once (each its own instance, of up
/// to `memoryLimit`): more wait, within their check's timeout.
pub const MAX_CALLS_PER_PLUGIN: usize = 4;

/// The loaded check plugins by name, as published by the plugin host.
pub type CheckPlugins = Arc<BTreeMap<String, Arc<CheckPlugin>>>;

/// One address a check may connect to: as configured, and what it
/// resolved to for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    pub address: String,
    pub resolved: Vec<SocketAddr>,
}

/// A loaded check plugin, ready for calls from any thread.
pub struct CheckPlugin {
    name: Arc<str>,
    engine: Arc<PluginEngine>,
    pre: v0_2_0::CheckPre<PluginState>,
    /// `agent.plugins.settings.<name>`, what the `settings` import answers.
    settings: Vec<(String, String)>,
    limits: Limits,
    calls: tokio::sync::Semaphore,
}

impl CheckPlugin {
    pub(super) fn new(
        name: Arc<str>,
        engine: Arc<PluginEngine>,
        pre: v0_2_0::CheckPre<PluginState>,
        settings: Vec<(String, String)>,
        limits: Limits,
    ) -> CheckPlugin {
        CheckPlugin {
            name,
            engine,
            pre,
            settings,
            limits,
            calls: tokio::sync::Semaphore::new(MAX_CALLS_PER_PLUGIN),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store with no network, for the load's trial instantiation.
    fn store(&self, allowed: BTreeSet<SocketAddr>) -> wasmtime::Store<PluginState> {
        let state = PluginState::for_check(
            self.name.clone(),
            self.settings.clone(),
            self.limits.memory,
            Arc::new(system::read()),
            self.engine.ticker().clone(),
            Arc::new(allowed),
        );
        new_store(&self.engine, state)
    }

    /// Instantiates once without calling anything: a component that traps
    /// at start-up, or outgrows its memory there, is refused at load.
    pub(super) async fn try_instantiate(&self) -> Result<(), CallError> {
        let mut store = self.store(BTreeSet::new());
        let _ticking = self.engine.ticker().busy();
        arm(&mut store, self.limits.timeout);
        guarded(self.limits.timeout, self.pre.instantiate_async(&mut store)).await?;
        Ok(())
    }

    /// One check: `Ok(output)` when the plugin says passing, `Err(why)`
    /// when it says critical, returns an error, traps or runs out of time.
    pub async fn check(
        &self,
        instance: &PluginInstance,
        targets: &[CheckTarget],
        settings: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let Ok(_call) = self.calls.acquire().await else {
            return Err(format!("plugin {} is unloading", self.name));
        };
        let allowed: BTreeSet<SocketAddr> = targets
            .iter()
            .flat_map(|t| t.resolved.iter().copied())
            .collect();
        let mut store = self.store(allowed);
        let budget = self.limits.timeout;
        let _ticking = self.engine.ticker().busy();
        arm(&mut store, budget);
        let call = async {
            let bindings = self.pre.instantiate_async(&mut store).await?;
            arm(&mut store, budget);
            let targets: Vec<v0_2_0::Target> = targets
                .iter()
                .map(|t| v0_2_0::Target {
                    address: t.address.clone(),
                    resolved: t.resolved.iter().map(SocketAddr::to_string).collect(),
                })
                .collect();
            let settings: Vec<(String, String)> = settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            bindings
                .call_check(
                    &mut store,
                    &v0_2_0::to_wit_instance(instance),
                    &targets,
                    &settings,
                )
                .await
        };
        // The store (and every socket the call opened) is dropped on return.
        match guarded(budget, call).await {
            Ok(Ok(outcome)) => {
                let output = cut(outcome.output);
                match outcome.status {
                    v0_2_0::CheckStatus::Passing => Ok(output),
                    v0_2_0::CheckStatus::Critical => Err(output),
                }
            }
            Ok(Err(error)) => Err(cut(error)),
            Err(error) => Err(format!("plugin {} {error}", self.name)),
        }
    }
}

/// `text` cut to [`MAX_CHECK_OUTPUT`] bytes at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_CHECK_OUTPUT {
        let mut end = MAX_CHECK_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_cut_at_a_character_boundary() {
        assert_eq!(cut("PONG".into()), "PONG");
        let long = "é".repeat(200);
        let out = cut(long);
        assert_eq!(out.len(), 256);
        assert!(out.chars().all(|c| c == 'é'));
    }
}
