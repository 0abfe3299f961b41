//! Test plugin: well-behaved. Says hello on stdout, stderr and the host log
//! at init; returns every setting as a key plus `echo_instance` = the
//! instance's name, so a test controls the output through the config.
//! With a `say` setting, init also prints it on stdout and stderr and logs
//! it through the host (what a plugin could try to forge log lines with).

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct Echo {
    settings: Settings,
}

impl Plugin for Echo {
    fn init(settings: &Settings) -> Result<Self, String> {
        eprintln!("echo plugin says hello on stderr");
        println!("echo plugin says hello on stdout");
        ygg_agent_sdk::info!("echo initialised");
        if let Some(say) = settings.get("say") {
            println!("{say}");
            eprintln!("{say}");
            ygg_agent_sdk::info!("{say}");
        }
        // Also exercises the `settings` import: it must agree with init's.
        let from_host = ygg_agent_sdk::settings();
        if &from_host != settings {
            return Err(format!(
                "host settings() {from_host:?} differ from init's {settings:?}"
            ));
        }
        Ok(Echo {
            settings: settings.clone(),
        })
    }

    fn collect(&mut self, instance: &Instance) -> Result<Metadata, String> {
        let mut out: Metadata = self
            .settings
            .iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        out.insert("echo_instance".to_owned(), instance.name.clone());
        Ok(out)
    }
}

ygg_agent_sdk::register_plugin!(Echo);
