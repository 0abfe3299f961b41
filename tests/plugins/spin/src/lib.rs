//! Test plugin: never returns from collect (a busy loop; only the agent's
//! timeout stops it).

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Spin;

impl Plugin for Spin {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Spin)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        let mut n: u64 = 0;
        loop {
            // black_box: the optimizer may not see through it, so the loop
            // stays a real loop doing work rather than being folded away.
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

ygg_agent_sdk::register_plugin!(Spin);
