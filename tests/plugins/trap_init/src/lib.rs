//! Test plugin: panics in init.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct TrapInit;

impl Plugin for TrapInit {
    fn init(_settings: &Settings) -> Result<Self, String> {
        panic!("boom in init");
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        Ok(Metadata::new())
    }
}

ygg_agent_sdk::register_plugin!(TrapInit);
