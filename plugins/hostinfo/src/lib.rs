//! Example ygg-agent plugin: facts about the machine an instance runs on.
//!
//! Keys `hostname`, `cpu_count` and `memory_total_bytes`.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct HostInfo;

impl Plugin for HostInfo {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(HostInfo)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        let system = ygg_agent_sdk::system();
        Ok(Metadata::from([
            ("hostname".to_owned(), system.hostname),
            ("cpu_count".to_owned(), system.cpu_count.to_string()),
            (
                "memory_total_bytes".to_owned(),
                system.memory_total_bytes.to_string(),
            ),
        ]))
    }
}

ygg_agent_sdk::register_plugin!(HostInfo);
