//! Test plugin: a well-formed plugin for contract `ygg:agent-plugin@0.3.0`
//! (`wit/plugin.wit` is the real contract with only the version changed).
//! The agent supports 0.1.0 and 0.2.0 only and must refuse to load it.
//!
//! It calls the host in every export so the component really imports
//! `ygg:agent-plugin/host@0.3.0` (unused imports are dropped from a
//! component).

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "plugin" });
}

use bindings::ygg::agent_plugin::host::{self, Level};
use bindings::{Instance, Pairs, PluginInfo};

struct WrongVersion;

impl bindings::Guest for WrongVersion {
    fn describe() -> PluginInfo {
        host::log(Level::Info, "wrong_version describe");
        PluginInfo {
            name: "wrong_version".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            suggested_interval_ms: None,
        }
    }

    fn init(_settings: Pairs) -> Result<(), String> {
        host::log(Level::Info, "wrong_version init");
        Ok(())
    }

    fn collect(_instance: Instance) -> Result<Pairs, String> {
        Ok(vec![("hostname".to_owned(), host::system().hostname)])
    }
}

bindings::export!(WrongVersion with_types_in bindings);
