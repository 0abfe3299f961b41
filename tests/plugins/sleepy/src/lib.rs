//! Test plugin: in collect, sleeps for an hour: a blocking WASI call
//! (`monotonic-clock` + `poll`) rather than a busy loop, which the agent's
//! timeout must interrupt as well.

use std::time::Duration;

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Sleepy;

impl Plugin for Sleepy {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Sleepy)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(Metadata::from([("slept".to_owned(), "yes".to_owned())]))
    }
}

ygg_agent_sdk::register_plugin!(Sleepy);
