//! Bindings for `ygg:agent-plugin@0.1.0` and the host side of its imports.
//! One module per supported WIT version: a new version gets a sibling
//! module, and this one stays for plugins built against 0.1.0.

use std::sync::Arc;

use super::PluginInstance;
use super::runner::PluginState;
use super::system::SystemSnapshot;

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "plugin",
    exports: { default: async },
});

pub use ygg::agent_plugin::host::Level;
pub use ygg::agent_plugin::types::Endpoint;

/// The version string in this module's import names.
pub const VERSION: &str = "0.1.0";

impl ygg::agent_plugin::types::Host for PluginState {}

impl ygg::agent_plugin::host::Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.guest_log(level, &message);
    }

    fn system(&mut self) -> ygg::agent_plugin::host::SystemSnapshot {
        to_wit_system(&self.system)
    }

    fn settings(&mut self) -> Vec<(String, String)> {
        self.settings.clone()
    }
}

fn to_wit_system(s: &Arc<SystemSnapshot>) -> ygg::agent_plugin::host::SystemSnapshot {
    ygg::agent_plugin::host::SystemSnapshot {
        load1: s.load1,
        load5: s.load5,
        load15: s.load15,
        memory_total_bytes: s.memory_total_bytes,
        memory_available_bytes: s.memory_available_bytes,
        hostname: s.hostname.clone(),
        uptime_seconds: s.uptime.as_secs(),
        cpu_count: s.cpu_count,
    }
}

pub fn to_wit_instance(instance: &PluginInstance) -> Instance {
    Instance {
        namespace: instance.instance.namespace.clone(),
        name: instance.instance.name.clone(),
        version: instance.instance.version.clone(),
        region: instance.instance.region.clone(),
        zone: instance.instance.zone.clone(),
        campus: instance.instance.campus.clone(),
        metadata: pairs(&instance.instance.metadata),
        endpoints: instance
            .instance
            .endpoints
            .iter()
            .map(|e| Endpoint {
                scheme: e.scheme.clone(),
                address: e.address.clone(),
                metadata: pairs(&e.metadata),
            })
            .collect(),
        key: instance.key.clone(),
    }
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
