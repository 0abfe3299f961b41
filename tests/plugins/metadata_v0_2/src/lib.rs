//! Test plugin: a metadata plugin for `ygg:agent-plugin@0.2.0` (world
//! `plugin`, from the SDK's `wit/v0.2.0/`), which the agent loads beside
//! 0.1.0 plugins. `collect` returns `wit` = `0.2.0` and `hostname` from the
//! host, so the component really imports `ygg:agent-plugin/host@0.2.0`.

mod bindings {
    wit_bindgen::generate!({ path: "../../../guest-sdk/wit/v0.2.0", world: "plugin" });
}

use bindings::ygg::agent_plugin::host::{self, Level};
use bindings::{Instance, Pairs, PluginInfo};

struct MetadataV2;

impl bindings::Guest for MetadataV2 {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "metadata_v0_2".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            suggested_interval_ms: None,
        }
    }

    fn init(_settings: Pairs) -> Result<(), String> {
        host::log(Level::Info, "metadata_v0_2 init");
        Ok(())
    }

    fn collect(_instance: Instance) -> Result<Pairs, String> {
        Ok(vec![
            ("wit".to_owned(), "0.2.0".to_owned()),
            ("hostname".to_owned(), host::system().hostname),
        ])
    }
}

bindings::export!(MetadataV2 with_types_in bindings);
