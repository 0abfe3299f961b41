//! Test plugin: returns `flap` = how many times collect has been called
//! (1, 2, 3, …), a different answer every call.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Flappy {
    calls: u64,
}

impl Plugin for Flappy {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Flappy { calls: 0 })
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        self.calls += 1;
        Ok(Metadata::from([(
            "flap".to_owned(),
            self.calls.to_string(),
        )]))
    }
}

ygg_agent_sdk::register_plugin!(Flappy);
