//! Local control: `agent.drainDelay`, `instancesDir`, `stateDir`, the local
//! API (`agent.api`) and the instances sent to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::record::Instance;

use super::checks::{CheckConfig, CheckTiming};
use super::instances::read_instance;
use super::report::{ConfigIssue, Report};
use super::rules::{folder_or_missing, readable_file, socket_address};
use super::yaml::{Document, Section, Unknown};

/// No wait between deleting the keys and revoking the lease.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;

/// The `agent` keys of local control (`drainDelay`, `instancesDir`, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalConfig {
    /// On SIGTERM: how long to wait between deleting the keys and revoking
    /// the lease (callers' resolvers drop the endpoints meanwhile).
    pub drain_delay: Duration,
    /// Absolute path of the instances folder (`*.yaml` files, each a list
    /// of instances); `None` = no folder.
    pub instances_dir: Option<PathBuf>,
    /// `agent.checks` as read: the defaults of the checks of instances that
    /// come from the folder (and the local API).
    pub check_defaults: CheckTiming,
    /// `agent.api`: the local API; `None` = off.
    pub api: Option<ApiConfig>,
    /// `agent.stateDir`: where maintenance is kept across restarts; `None`
    /// = the default (`$STATE_DIRECTORY`, else the XDG state folder).
    pub state_dir: Option<PathBuf>,
}

/// `agent.api`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// The Unix socket; `None` = the default (`$RUNTIME_DIRECTORY/agent.sock`, …).
    pub socket: Option<PathBuf>,
    /// Also on this loopback TCP address, with a bearer token.
    pub listen: Option<SocketAddr>,
    /// The file holding the TCP listener's token (required with `listen`).
    pub token_file: Option<PathBuf>,
}

/// An instance sent to the local API: as in `agent.instances[]`, plus an
/// optional `ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiInstance {
    pub instance: Instance,
    pub checks: Vec<CheckConfig>,
    /// Registered only while `pass` comes within each `ttl`.
    pub ttl: Option<Duration>,
}

/// The shortest TTL of an API registration.
pub const MIN_API_TTL: Duration = Duration::from_secs(1);

/// The local-control keys of `agent`.
pub(super) fn read_local(agent: &mut Section, base: &Path, defaults: &CheckTiming) -> LocalConfig {
    #[rustfmt::skip]
    let local = LocalConfig {
        drain_delay: agent.duration("drainDelay").or(DEFAULT_DRAIN_DELAY),
        instances_dir: agent.path("instancesDir", base).check(|d| folder_or_missing(d)).value(),
        check_defaults: defaults.clone(),
        api: agent.section("api").value().and_then(|api| read_api(api, base)),
        state_dir: agent.path("stateDir", base).value(),
    };
    local
}

fn read_api(mut api: Section, base: &Path) -> Option<ApiConfig> {
    let socket = api.path("socket", base).value();
    let listen = api
        .string("listen")
        .parse(socket_address)
        .check(loopback)
        .value();
    let token = (api.path("tokenFile", base))
        .check(|f| readable_file(f))
        .check(|f| super::secret::private_file("the file", f));
    let token_file = match listen {
        Some(_) => token.required("required with `listen`: the TCP listener needs a bearer token"),
        None => token.value(),
    };
    api.finish(Unknown::Error);
    Some(ApiConfig {
        socket,
        listen,
        token_file,
    })
}

/// The local API on TCP is for the node only.
fn loopback(address: &SocketAddr) -> Result<(), String> {
    if address.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{address} is not a loopback address: the local API listens on 127.0.0.1 or ::1 only"
        ))
    }
}

/// Validates an instance sent to the local API (JSON, which the YAML
/// reader reads as it is): the `agent.instances[]` rules and wording, plus
/// `ttl`; unknown fields are refused. Paths are like `endpoints[0].address`.
pub fn parse_api_instance(
    text: &str,
    defaults: &CheckTiming,
) -> Result<ApiInstance, Vec<ConfigIssue>> {
    let document = Document::parse(text).map_err(|issue| vec![issue])?;
    let report = Report::default();
    let read = document
        .root(&report)
        .section()
        .value()
        .and_then(|mut map| {
            let ttl = map.duration("ttl").min(MIN_API_TTL).value();
            read_instance(map, defaults, &report).map(|(instance, checks)| (instance, checks, ttl))
        });
    let (errors, _) = report.into_issues();
    match read {
        Some((instance, checks, ttl)) if errors.is_empty() => Ok(ApiInstance {
            instance,
            checks,
            ttl,
        }),
        _ => Err(errors),
    }
}
