//! Test plugin: returns keys the agent must reject: one with a space and a
//! `!`, an empty one, and one of 200 characters (over the 128 limit).

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct BadKeys;

impl Plugin for BadKeys {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(BadKeys)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        Ok(Metadata::from([
            ("bad key!".to_owned(), "v".to_owned()),
            (String::new(), "v".to_owned()),
            ("k".repeat(200), "v".to_owned()),
        ]))
    }
}

ygg_agent_sdk::register_plugin!(BadKeys);
