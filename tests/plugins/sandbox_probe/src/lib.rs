//! Test plugin: tries what the sandbox must deny and reports each attempt as
//! `denied` or `allowed`:
//!
//! - `fs`: read `/etc/passwd`
//! - `dir`: list `/`
//! - `env`: read `HOME`
//! - `env_count`: any environment variable at all
//! - `net`: connect to `127.0.0.1:2379`

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};

struct SandboxProbe;

fn verdict(allowed: bool) -> String {
    if allowed { "allowed" } else { "denied" }.to_owned()
}

impl Plugin for SandboxProbe {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(SandboxProbe)
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        let fs = std::fs::read_to_string("/etc/passwd").is_ok();
        let dir = std::fs::read_dir("/").is_ok();
        let env = std::env::var_os("HOME").is_some();
        // vars_os: `vars` panics on a non-UTF-8 variable.
        let env_count = std::env::vars_os().count() > 0;
        let net = std::net::TcpStream::connect("127.0.0.1:2379").is_ok();
        Ok(Metadata::from([
            ("fs".to_owned(), verdict(fs)),
            ("dir".to_owned(), verdict(dir)),
            ("env".to_owned(), verdict(env)),
            ("env_count".to_owned(), verdict(env_count)),
            ("net".to_owned(), verdict(net)),
        ]))
    }
}

ygg_agent_sdk::register_plugin!(SandboxProbe);
