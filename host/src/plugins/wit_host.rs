//! What every WIT version module shares: the host side of the `host` and
//! `types` imports (the same in 0.1.0 and 0.2.0, but each `bindgen!` makes
//! its own types, so the code is written once here as a macro each
//! version module expands), and the test that freezes a published version.

/// Implements the `host` and `types` imports for [`PluginState`] and
/// defines `to_wit_instance`, against the bindings of the module it is
/// expanded in (which imports `Arc`, `PluginInstance`, `PluginState` and
/// `SystemSnapshot`).
///
/// [`PluginState`]: super::state::PluginState
macro_rules! host_imports {
    () => {
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
                let s: &Arc<SystemSnapshot> = &self.system;
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

            fn settings(&mut self) -> Vec<(String, String)> {
                self.settings.clone()
            }
        }

        pub fn to_wit_instance(instance: &PluginInstance) -> Instance {
            let pairs = super::wit_host::pairs;
            Instance {
                namespace: instance.instance.namespace.clone(),
                name: instance.instance.name.clone(),
                version: instance.instance.version.clone(),
                region: instance.instance.region.clone(),
                zone: instance.instance.zone.clone(),
                campus: instance.instance.campus.clone(),
                metadata: pairs(&instance.instance.metadata),
                endpoints: (instance.instance.endpoints.iter())
                    .map(|e| Endpoint {
                        scheme: e.scheme.clone(),
                        address: e.address.clone(),
                        metadata: pairs(&e.metadata),
                    })
                    .collect(),
                key: instance.key.clone(),
            }
        }
    };
}

pub(super) use host_imports;

/// A map as the WIT's list of pairs.
pub(super) fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Fails unless `guest-sdk/wit/v<version>/` holds exactly `plugin.wit` with
/// the SHA-256 it was published with: a published version never changes,
/// a new one gets a folder, a module and a row in `engine::WIT_VERSIONS`.
#[cfg(test)]
pub(super) fn assert_frozen(version: &str, published_sha256: &str, next: &str) {
    use sha2::{Digest, Sha256};

    let frozen = format!(
        "WIT {version} is published and frozen: add a new version folder (guest-sdk/wit/v{next}/, a v{} module, a row in engine::WIT_VERSIONS) instead of editing it",
        next.replace('.', "_")
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../guest-sdk/wit/v{version}"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["plugin.wit"], "{frozen}");
    let wit = std::fs::read(dir.join("plugin.wit")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&wit)),
        published_sha256,
        "{frozen}"
    );
}
