//! Bindings for `ygg:agent-plugin@0.1.0` (`guest-sdk/wit/v0.1.0/`, frozen)
//! and the host side of its imports. One module per supported WIT version,
//! each listed in `engine::WIT_VERSIONS`: a new version gets a sibling
//! module and folder, and this one stays for plugins built against 0.1.0.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::instance::PluginInstance;
use super::state::PluginState;
use super::system::SystemSnapshot;

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit/v0.1.0",
    world: "plugin",
    exports: { default: async },
});

pub use ygg::agent_plugin::host::Level;
pub use ygg::agent_plugin::types::Endpoint;

/// The version string in this module's import names.
pub const VERSION: &str = "0.1.0";

/// Adds the host side of this version's imports.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The folder `bindgen!` reads above, from this crate's manifest.
    const WIT_DIR: &str = "../guest-sdk/wit/v0.1.0";
    /// SHA-256 of `plugin.wit` as 0.1.0 was published.
    const PUBLISHED_SHA256: &str =
        "46b4cafdbfee626cbc64d3a1e5f492bcf025f2bf56fa66609bd614b56ba4a500";
    const FROZEN: &str = "WIT 0.1.0 is published and frozen: add a new version folder (guest-sdk/wit/v0.2.0/, a v0_2_0 module, a row in engine::WIT_VERSIONS) instead of editing it";

    #[test]
    fn the_published_wit_is_frozen() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(WIT_DIR);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["plugin.wit"], "{FROZEN}");
        let wit = std::fs::read(dir.join("plugin.wit")).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&wit)),
            PUBLISHED_SHA256,
            "{FROZEN}"
        );
    }
}
