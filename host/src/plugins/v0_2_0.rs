//! Bindings for `ygg:agent-plugin@0.2.0` (`guest-sdk/wit/v0.2.0/`) and the
//! host side of its imports. 0.2.0 adds the `check` world (health-check
//! plugins) beside a `plugin` world identical to 0.1.0's.
//!
//! Only the `check` world is bound here. A 0.2.0 metadata plugin exports
//! the same `describe`, `init` and `collect` with the same types as 0.1.0,
//! and the component model checks exports by structure, not by package
//! version: the runner calls it through `v0_1_0::PluginPre`, whose
//! constructor type-checks those exports; the linker gives it this
//! module's `host@0.2.0`. A version that changes the metadata exports gets
//! its own bindings and an enum in the runner.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::instance::PluginInstance;
use super::state::PluginState;
use super::system::SystemSnapshot;

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit/v0.2.0",
    world: "check",
    exports: { default: async },
});

pub use ygg::agent_plugin::host::Level;
pub use ygg::agent_plugin::types::{CheckStatus, Endpoint};

/// The version string in this module's import names.
pub const VERSION: &str = "0.2.0";

/// Adds the host side of this version's imports (the same `host` interface
/// serves both of its worlds).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Check::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
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
    const WIT_DIR: &str = "../guest-sdk/wit/v0.2.0";
    /// SHA-256 of `plugin.wit` as 0.2.0 was published.
    const PUBLISHED_SHA256: &str =
        "b1804c1ee82d3365c936a29e7887b2827a78c1f39801ac759ab137a35f1b70cc";
    const FROZEN: &str = "WIT 0.2.0 is published and frozen: add a new version folder (guest-sdk/wit/v0.3.0/, a v0_3_0 module, a row in engine::WIT_VERSIONS) instead of editing it";

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
