//! Test plugin: leaks 1 MiB (written to) per collect and returns
//! `leaked_mib` = the total so far, so memory grows slowly across calls.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct SlowLeak {
    leaked_mib: u64,
}

impl Plugin for SlowLeak {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(SlowLeak { leaked_mib: 0 })
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        std::hint::black_box(vec![0xA5_u8; 1 << 20].leak());
        self.leaked_mib += 1;
        Ok(Metadata::from([(
            "leaked_mib".to_owned(),
            self.leaked_mib.to_string(),
        )]))
    }
}

ygg_agent_sdk::register_plugin!(SlowLeak);
