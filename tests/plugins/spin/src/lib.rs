//! Test plugin: never returns (a busy loop; only the agent's timeout stops
//! it): from `collect`, or from `init` when its `phase` setting is `init`.

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Spin;

/// Works forever. black_box: the optimizer may not see through it, so the
/// loop stays a real loop doing work rather than being folded away.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Plugin for Spin {
    fn init(settings: &Settings) -> Result<Self, String> {
        if settings.get("phase") == Some("init") {
            ygg_agent_sdk::info!("spinning in init");
            spin();
        }
        Ok(Spin)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        spin()
    }
}

ygg_agent_sdk::register_plugin!(Spin);
