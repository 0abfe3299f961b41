//! Example ygg-agent plugin: the machine's 1-minute load average.
//!
//! Key `load`, with two decimals (`0.42`). The agent reads the load once per
//! round for every plugin, so this costs nothing per instance.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Load;

impl Plugin for Load {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Load)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        let load = ygg_agent_sdk::system().load1;
        Ok(Metadata::from([("load".to_owned(), format!("{load:.2}"))]))
    }
}

ygg_agent_sdk::register_plugin!(Load);
