//! Test plugin: returns one key whose value is 1 MiB of `x` (far over the
//! 512-byte value limit).

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct BigOutput;

impl Plugin for BigOutput {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(BigOutput)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        Ok(Metadata::from([("big".to_owned(), "x".repeat(1 << 20))]))
    }
}

ygg_agent_sdk::register_plugin!(BigOutput);
