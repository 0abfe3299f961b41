//! Test plugin: loads fine, panics in every collect.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct TrapCollect;

impl Plugin for TrapCollect {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(TrapCollect)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        panic!("boom in collect");
    }
}

ygg_agent_sdk::register_plugin!(TrapCollect);
