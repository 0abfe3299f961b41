//! The `agent` section: its table of keys, `shutdownTimeout` and `admin`;
//! every other key is read by the module of its own section.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::record::Instance;

use super::checks::{CheckConfig, read_check_defaults};
use super::instances::read_instances;
use super::local::{LocalConfig, read_local};
use super::plugins::{PluginsConfig, read_plugins};
use super::publish::{Publish, check_naming_targets, read_publish};
use super::report::Report;
use super::rules::socket_address;
use super::yaml::{Section, Unknown};

pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `agent` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub instances: Vec<Instance>,
    /// `checks[i]` are the health checks of `instances[i]` (empty: none),
    /// with `agent.checks`' defaults applied and their targets resolved.
    /// Always as long as `instances`.
    pub checks: Vec<Vec<CheckConfig>>,
    pub plugins: Option<PluginsConfig>,
    pub admin: Option<AdminConfig>,
    pub shutdown_timeout: Duration,
    /// `agent.publish` and `agent.etcdNaming`: the formats written.
    pub publish: Publish,
    /// Local control: drain, the instances folder, the local API (#12).
    pub local: LocalConfig,
}

/// `agent.admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

pub(super) fn empty_agent() -> AgentConfig {
    AgentConfig {
        instances: Vec::new(),
        checks: Vec::new(),
        plugins: None,
        admin: None,
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        publish: Publish::default(),
        local: LocalConfig::default(),
    }
}

pub(super) fn read_agent(mut agent: Section, base: &Path, report: &Report) -> AgentConfig {
    // The defaults come first: every check of every instance starts from them.
    let defaults = agent
        .section("checks")
        .value()
        .map(read_check_defaults)
        .unwrap_or_default();
    let instances = agent.list("instances").value();
    let (instances, checks) = instances
        .map(|l| read_instances(&l, &defaults, report))
        .unwrap_or_default();
    #[rustfmt::skip]
    let config = AgentConfig {
        instances,
        checks,
        plugins: agent.section("plugins").value().map(|plugins| read_plugins(plugins, base)),
        admin: agent.section("admin").value().and_then(read_admin),
        shutdown_timeout: agent.duration("shutdownTimeout").nonzero().or(DEFAULT_SHUTDOWN_TIMEOUT),
        publish: read_publish(&mut agent),
        local: read_local(&mut agent, base, &defaults),
    };
    if let Some(naming) = &config.publish.etcd_naming {
        check_naming_targets(
            naming,
            &config.instances,
            (&agent.key_path("etcdNaming"), agent.key_line("etcdNaming")),
            report,
        );
    }
    agent.finish(Unknown::Error);
    config
}

fn read_admin(mut admin: Section) -> Option<AdminConfig> {
    let listen = admin.string("listen").parse(socket_address);
    let listen = listen.required("missing (remove `admin` to turn the admin server off)");
    admin.finish(Unknown::Error);
    Some(AdminConfig { listen: listen? })
}
