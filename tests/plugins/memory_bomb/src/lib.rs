//! Test plugin: in collect, allocates 1 MiB chunks (each written to, so the
//! memory is really used) until the agent's memory limit stops it.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(MemoryBomb)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            chunks.push(std::hint::black_box(vec![0xA5; 1 << 20]));
        }
    }
}

ygg_agent_sdk::register_plugin!(MemoryBomb);
