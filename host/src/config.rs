//! The agent's configuration: the validated types the rest of the program uses
//! and [`load`], the only way to make them. This module and its children are
//! the only code that knows the file is YAML.
//!
//! Parsing is two-phase: the YAML tree (with line numbers) is walked once,
//! every problem is collected with its path, and only a file without errors
//! becomes a [`Config`].

mod field;
mod report;
mod secret;
mod units;
mod yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use crate::record::{
    self, DEFAULT_NAMESPACE, Endpoint, INSTANCE_ID_KEY, INSTANCE_ID_MAX_LEN, Instance,
};
use field::Field;
use report::{Report, YamlPath};
use yaml::{Document, List, Section, Unknown, Value};

pub use report::ConfigIssue;
pub use secret::{Secret, private_mode, redact_url};
pub use units::{parse_duration, parse_size};
pub use yaml::to_json;

/// etcd address used when `client.endpoints` is absent (the seed's default).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PREFIX: &str = "/yggdrasil/registry";
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// etcd cannot keep a lease shorter than about 1.5 election timeouts.
pub const MIN_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_KEEP_ALIVE: bool = true;
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(3);
pub const MIN_RETRY_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// No wait between deleting the keys and revoking the lease.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
pub const DEFAULT_PLUGIN_INTERVAL: Duration = Duration::from_secs(30);
pub const MIN_PLUGIN_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The epoch ticker runs every 10 ms; a shorter budget could not be enforced.
pub const MIN_PLUGIN_TIMEOUT: Duration = Duration::from_millis(10);
pub const DEFAULT_PLUGIN_MEMORY: u64 = 32 << 20;
/// A Rust component needs about 1.1 MiB of linear memory just to start.
pub const MIN_PLUGIN_MEMORY: u64 = 2 << 20;
pub const MAX_PLUGIN_MEMORY: u64 = 4 << 30;
/// Longest namespace or service name: it becomes one segment of an etcd key.
pub const MAX_NAME_LEN: usize = 128;
/// The endpoint schemes Yggdrasil's Go resolver keeps when its `protocols`
/// list is not set (compared case-sensitively, as Go does).
pub const YGGDRASIL_DEFAULT_PROTOCOLS: [&str; 2] = ["grpc", "http"];

/// A validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub registry: RegistryConfig,
    pub agent: AgentConfig,
}

/// `yggdrasil.registry.config`: how to reach etcd and how to hold the keys.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    pub client: ClientConfig,
    /// Starts with `/`; used as written, like Yggdrasil's Go registry: keys
    /// are `prefix + "/" + namespace + …`, so a trailing `/` is kept (and
    /// makes a double slash, which `check` warns about).
    pub prefix: String,
    /// Whole seconds, at least [`MIN_TTL`].
    pub ttl: Duration,
    pub keep_alive: bool,
    pub retry_interval: Duration,
}

/// `yggdrasil.registry.config.client`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsConfig>,
}

/// etcd user name and password. The password never prints.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// TLS to etcd: a CA to trust, and optionally a client certificate.
/// Paths are absolute (resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub ca_file: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

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

/// What the agent writes to etcd for each instance (`agent.publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Yggdrasil's record under `<prefix>/<namespace>/<name>/<id>`.
    pub yggdrasil: bool,
    /// etcd's gRPC naming format: one key per grpc endpoint.
    pub etcd_naming: Option<EtcdNaming>,
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            yggdrasil: true,
            etcd_naming: None,
        }
    }
}

/// `agent.etcdNaming`: where the etcd naming keys go
/// (`go.etcd.io/etcd/client/v3/naming/endpoints`, what gRPC's
/// `etcd:///<target>` resolver reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdNaming {
    /// Put before every target with a `/` (empty: targets are used as they
    /// are).
    pub prefix: String,
    /// The target of a service by `<namespace>/<name>`; a service not
    /// listed has the target `<namespace>/<name>`.
    pub targets: BTreeMap<String, String>,
}

impl EtcdNaming {
    /// The full target a gRPC client dials (`etcd:///<target>`) to reach
    /// `instance`'s service.
    pub fn target(&self, instance: &Instance) -> String {
        let service = format!("{}/{}", instance.namespace, instance.name);
        let target = self.targets.get(&service).cloned().unwrap_or(service);
        if self.prefix.is_empty() {
            target
        } else {
            format!("{}/{target}", self.prefix)
        }
    }
}

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

/// One health check of an instance (`agent.instances[].checks[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub probe: Probe,
    pub interval: Duration,
    /// Below `interval`.
    pub timeout: Duration,
    /// Consecutive passes that make a critical check passing (≥ 1).
    pub success_before_passing: u32,
    /// Consecutive failures that make a passing check critical (≥ 1).
    pub failures_before_critical: u32,
    /// The status before the first result.
    pub initial_status: CheckStatus,
}

/// What a check does, with its target resolved (an address left out in
/// the file is the instance's own endpoint of the matching scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Passes when a TCP connection to `address` (`host:port`) opens.
    Tcp { address: String },
    /// Passes on a 2xx answer; redirects are not followed.
    Http {
        /// `http://…` or `https://…`.
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls_skip_verify: bool,
    },
    /// `grpc.health.v1.Health/Check` on `address`; passes on `SERVING`.
    Grpc {
        address: String,
        /// The service name asked about; empty = the server as a whole.
        service: String,
        tls: bool,
    },
    /// Asks the check plugin `plugin` (world `check` of WIT 0.2.0, in the
    /// plugins folder), which may connect to `targets` and nowhere else.
    Plugin {
        plugin: String,
        /// `host:port` pairs: the check's `target`, or else every
        /// endpoint of the instance (in their order).
        targets: Vec<String>,
        settings: BTreeMap<String, String>,
        /// The instance checked, as the plugin is told about it.
        instance: Box<Instance>,
    },
}

/// A check's (and an instance's) health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    Passing,
    Critical,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_SUCCESS_BEFORE_PASSING: u32 = 1;
pub const DEFAULT_FAILURES_BEFORE_CRITICAL: u32 = 3;
pub const DEFAULT_INITIAL_STATUS: CheckStatus = CheckStatus::Critical;
/// A check more often than this would be load, not a health signal.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_HTTP_METHOD: &str = "GET";

/// `agent.plugins`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsConfig {
    /// Absolute path of the plugins folder.
    pub dir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    pub memory_limit: u64,
    /// Settings by plugin name, handed to the plugin's `init`.
    pub settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Where compiled plugins are cached; `None` = the agent's default.
    pub cache_dir: Option<PathBuf>,
    /// A record change only plugin output caused is written at most this
    /// often per instance; `None`: whenever a round changes it (at most
    /// once per `interval`).
    pub min_rewrite_interval: Option<Duration>,
}

/// `agent.admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            client: ClientConfig::default(),
            prefix: DEFAULT_PREFIX.to_string(),
            ttl: DEFAULT_TTL,
            keep_alive: DEFAULT_KEEP_ALIVE,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec![DEFAULT_ENDPOINT.to_string()],
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            credentials: None,
            tls: None,
        }
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is invalid ({} error{}):\n{}", path.display(), issues.len(),
        if issues.len() == 1 { "" } else { "s" }, list(issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
        /// Found beside the errors; not part of the message, so `check`
        /// can list them after it.
        warnings: Vec<ConfigIssue>,
    },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A valid config and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigIssue>,
    /// SHA-256 of the text this was parsed from.
    pub digest: [u8; 32],
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded =
        validate(&text, &base_dir(path)).map_err(|(issues, warnings)| ConfigError::Invalid {
            path: path.to_path_buf(),
            issues,
            warnings,
        })?;
    if loaded.config.registry.client.credentials.is_some()
        && let Err(problem) = secret::private_file("the config file", path)
    {
        loaded.warnings.push(ConfigIssue {
            path: "yggdrasil.registry.config.client.password".into(),
            line: None,
            message: format!("the etcd password is in this file: {problem}"),
        });
    }
    Ok(loaded)
}

/// The folder relative paths in the config file at `path` are resolved
/// against: the file's own folder, made absolute.
pub fn base_dir(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf())
}

/// Validates config text; relative paths in it are resolved against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Loaded, Vec<ConfigIssue>> {
    validate(text, base).map_err(|(errors, _)| errors)
}

/// [`parse`], keeping the warnings when there are errors: `Err((errors,
/// warnings))`.
fn validate(text: &str, base: &Path) -> Result<Loaded, (Vec<ConfigIssue>, Vec<ConfigIssue>)> {
    if text.trim().is_empty() {
        let empty = ConfigIssue {
            path: YamlPath::default().to_string(),
            line: None,
            message: "the file is empty".into(),
        };
        return Err((vec![empty], Vec::new()));
    }
    let document = Document::parse(text).map_err(|issue| (vec![issue], Vec::new()))?;
    let report = Report::default();
    let config = read_root(document.root(&report), base, &report);
    let (errors, warnings) = report.into_issues();
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded {
            config,
            warnings,
            digest: sha2::Sha256::digest(text.as_bytes()).into(),
        }),
        _ => Err((errors, warnings)),
    }
}

// The readers: one per section, each a table of its keys in file order
// (the order errors are listed in). Rules they apply are further down.

fn read_root(root: Value, base: &Path, report: &Report) -> Option<Config> {
    let mut top = root.section().value()?;
    let registry = top.section("yggdrasil").value();
    let registry = registry.map_or_else(RegistryConfig::default, |ygg| read_yggdrasil(ygg, base));
    let agent = top.section("agent");
    if agent.is_absent() {
        let message = "no agent section: nothing to register";
        report.warning(&top.key_path("agent"), None, message);
    }
    let agent = agent.value();
    let agent = agent.map_or_else(empty_agent, |agent| read_agent(agent, base, report));
    // Other top-level keys belong to the application sharing the file.
    top.finish(Unknown::Ignore);
    Some(Config { registry, agent })
}

fn empty_agent() -> AgentConfig {
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

fn read_yggdrasil(mut ygg: Section, base: &Path) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    if let Some(mut registry) = ygg.section("registry").value() {
        registry.string("type").check(|kind| etcd_only(kind));
        if let Some(section) = registry.section("config").value() {
            config = read_registry_config(section, base);
        }
        registry.finish(Unknown::Warn);
    }
    if let Some((at, v3)) = read_v3_registry(&mut ygg) {
        if ygg.get("registry").is_some() {
            at.error(format!(
                "both {} (Yggdrasil v2 layout) and {} (v3 layout) are set: keep one",
                ygg.key_path("registry"),
                ygg.key_path("discovery").key("registry")
            ));
        }
        config = v3;
    }
    // The rest of `yggdrasil` configures the application, not us.
    ygg.finish(Unknown::Ignore);
    config
}

// Yggdrasil v3's layout, as codesjoy/yggdrasil-ecosystem `modules/etcd`
// reads it at commit 2159f4b: `discovery.registry` (`type`, `config`) whose
// `config.client` names an etcd client defined under `etcd.clients`.

/// The etcd client a v3 registry uses when `config.client` is blank.
const V3_DEFAULT_CLIENT: &str = "default";

/// `yggdrasil.discovery.registry`, with where it is written, or `None` when
/// the file has none.
fn read_v3_registry<'a>(ygg: &mut Section<'a>) -> Option<(Value<'a>, RegistryConfig)> {
    let mut discovery = ygg.section("discovery").value()?;
    let at = discovery.get("registry")?;
    // `resolvers` and the rest configure the application's clients.
    discovery.finish(Unknown::Ignore);
    let mut registry = at.section().value()?;
    registry.string("type").check(|kind| etcd_only(kind));
    let config = read_v3_registry_config(registry.section("config").value(), ygg);
    registry.finish(Unknown::Warn);
    Some((at, config))
}

/// `discovery.registry.config` (discovery/registry.go `RegistryConfig`).
/// An absent `config` is Go's zero value: every default, client `default`.
fn read_v3_registry_config<'a>(cfg: Option<Section<'a>>, ygg: &mut Section<'a>) -> RegistryConfig {
    let Some(mut cfg) = cfg else {
        return RegistryConfig {
            client: read_v3_client(None, ygg),
            ..RegistryConfig::default()
        };
    };
    #[rustfmt::skip]
    let config = RegistryConfig {
        client: read_v3_client(Some(cfg.string("client")), ygg),
        prefix: read_prefix(cfg.string("prefix")),
        ttl: cfg.duration("ttl").min(MIN_TTL).check(whole_seconds).or(DEFAULT_TTL),
        keep_alive: cfg.boolean("keep_alive").or(DEFAULT_KEEP_ALIVE),
        retry_interval: cfg.duration("retry_interval").min(MIN_RETRY_INTERVAL).or(DEFAULT_RETRY_INTERVAL),
    };
    cfg.finish(Unknown::Warn);
    config
}

/// The client `config.client` names in `etcd.clients`. Go reads a blank name
/// as `default` (internal/client/client.go `ResolveName`), and an absent
/// `default` as every default, which is kept here. A client that is named but
/// not defined is an error, where Go silently dials 127.0.0.1:2379
/// (module.go `clientConfig` returns the zero `Config`).
fn read_v3_client<'a>(named: Option<Field<'a, String>>, ygg: &mut Section<'a>) -> ClientConfig {
    let name = named.as_ref().and_then(Field::get);
    let name = name.filter(|name| !name.trim().is_empty()).cloned();
    let wanted = name.as_deref().unwrap_or(V3_DEFAULT_CLIENT);
    let clients_path = ygg.key_path("etcd").key("clients");
    let clients = ygg.section("etcd").value().and_then(|mut etcd| {
        // Only the registry's client is ours; the rest is the application's.
        let clients = etcd.section("clients").value();
        etcd.finish(Unknown::Ignore);
        clients
    });
    let found = clients.as_ref().and_then(|clients| {
        (clients.entries()).find_map(|(key, value)| (key.get()? == wanted).then_some(value))
    });
    match (found, named) {
        (Some(client), _) => (client.section().value())
            .map(read_v3_etcd_client)
            .unwrap_or_default(),
        (None, Some(named)) if name.is_some() => {
            named.error(format!(
                "client `{wanted}` is not defined: add {} (Yggdrasil would dial {DEFAULT_ENDPOINT} instead)",
                clients_path.key(wanted)
            ));
            ClientConfig::default()
        }
        (None, _) => ClientConfig::default(),
    }
}

/// `etcd.clients.<name>` (internal/client/client.go `Config`): endpoints,
/// dial timeout and credentials. v3 has no TLS settings.
fn read_v3_etcd_client(mut client: Section) -> ClientConfig {
    let (listed, endpoints) = read_client_endpoints(&mut client);
    #[rustfmt::skip]
    let config = ClientConfig {
        endpoints,
        dial_timeout: client.duration("dial_timeout").nonzero().or(DEFAULT_DIAL_TIMEOUT),
        credentials: read_credentials(&mut client),
        tls: None,
    };
    for (item, endpoint) in &listed {
        if endpoint.starts_with("https://") {
            item.error(format!(
                "`{endpoint}` is https, but Yggdrasil v3's etcd client has no TLS settings: \
                 write host:port, or use the v2 layout (yggdrasil.registry.config.client.tls)"
            ));
        }
    }
    client.finish(Unknown::Warn);
    config
}

fn read_registry_config(mut cfg: Section, base: &Path) -> RegistryConfig {
    #[rustfmt::skip]
    let config = RegistryConfig {
        client: cfg.section("client").value().map(|c| read_client(c, base)).unwrap_or_default(),
        prefix: read_prefix(cfg.string("prefix")),
        ttl: cfg.duration("ttl").min(MIN_TTL).check(whole_seconds).or(DEFAULT_TTL),
        keep_alive: cfg.boolean("keepAlive").or(DEFAULT_KEEP_ALIVE),
        retry_interval: cfg.duration("retryInterval").min(MIN_RETRY_INTERVAL).or(DEFAULT_RETRY_INTERVAL),
    };
    cfg.finish(Unknown::Warn);
    config
}

/// A registry `prefix`, used as written (as Yggdrasil's Go registry does);
/// empty or absent is the default, as in Go's `NewRegistry`.
fn read_prefix(prefix: Field<String>) -> String {
    (prefix.filter(|p| !p.is_empty()))
        .check(|p| check_prefix(p))
        .warn(|p| trailing_slash(p))
        .or(DEFAULT_PREFIX.into())
}

/// A client's `endpoints`: each valid one with its YAML value (for errors
/// about that endpoint), and the list to use (the default when none).
fn read_client_endpoints<'a>(client: &mut Section<'a>) -> (Vec<(Value<'a>, String)>, Vec<String>) {
    let listed = client.list("endpoints").value();
    let listed = listed.and_then(read_etcd_endpoints).unwrap_or_default();
    let endpoints: Vec<String> = listed.iter().map(|(_, e)| e.clone()).collect();
    let endpoints = if endpoints.is_empty() {
        ClientConfig::default().endpoints
    } else {
        endpoints
    };
    (listed, endpoints)
}

fn read_client(mut client: Section, base: &Path) -> ClientConfig {
    let (listed, endpoints) = read_client_endpoints(&mut client);
    #[rustfmt::skip]
    let config = ClientConfig {
        endpoints,
        dial_timeout: client.duration("dialTimeout").nonzero().or(DEFAULT_DIAL_TIMEOUT),
        credentials: read_credentials(&mut client),
        tls: client.section("tls").value().and_then(|tls| read_tls(tls, base)),
    };
    let tls_path = client.key_path("tls");
    for (item, endpoint) in &listed {
        match config.tls {
            Some(_) if endpoint.starts_with("http://") => item.error(format!(
                "`{endpoint}` is plain http but {tls_path} is set: write host:port or https://"
            )),
            None if endpoint.starts_with("https://") => item.error(format!(
                "`{endpoint}` is https: set {tls_path}.caFile to the CA that signed etcd's certificate"
            )),
            _ => {}
        }
    }
    client.finish(Unknown::Warn);
    config
}

/// The valid endpoints, each with where it is written, or `None` (reported)
/// for an empty list.
fn read_etcd_endpoints(list: List) -> Option<Vec<(Value, String)>> {
    let endpoints = (list.items())
        .filter_map(|item| {
            let endpoint = item.string().check(|e| check_etcd_endpoint(e)).valid()?;
            Some((item, endpoint))
        })
        .collect();
    if list.is_empty() {
        list.error("at least one etcd endpoint is needed");
        return None;
    }
    Some(endpoints)
}

fn read_credentials(client: &mut Section) -> Option<Credentials> {
    let username = client.string("username");
    let password = client.secret("password");
    match (username.get(), password.get()) {
        (Some(user), Some(secret)) if !user.is_empty() => Some(Credentials {
            username: user.clone(),
            password: secret.clone(),
        }),
        (Some(user), None) if !user.is_empty() => {
            username.error("a username needs a password beside it");
            None
        }
        (_, Some(secret)) if !secret.expose().is_empty() => {
            password.error("a password needs a username beside it");
            None
        }
        _ => None,
    }
}

fn read_tls(mut tls: Section, base: &Path) -> Option<TlsConfig> {
    // A missing file is reported but its path kept, so the pairing rules
    // below do not also call it absent.
    let mut file = |key| tls.path(key, base).check(|f| readable_file(f)).value();
    let (cert, key, ca) = (file("certFile"), file("keyFile"), file("caFile"));
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            tls.missing("keyFile", "certFile is set but keyFile is missing");
            None
        }
        (None, Some(_)) => {
            tls.missing("certFile", "keyFile is set but certFile is missing");
            None
        }
    };
    if ca.is_none() {
        let message = "TLS needs caFile (all three paths, or caFile only)";
        tls.missing("caFile", message);
    }
    tls.finish(Unknown::Warn);
    Some(TlsConfig {
        ca_file: ca?,
        identity,
    })
}

fn read_agent(mut agent: Section, base: &Path, report: &Report) -> AgentConfig {
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
            &agent.key_path("etcdNaming"),
            report,
        );
    }
    agent.finish(Unknown::Error);
    config
}

/// `agent.publish` (a list of formats) and `agent.etcdNaming`.
fn read_publish(agent: &mut Section) -> Publish {
    let naming = agent.section("etcdNaming");
    let listed = agent.list("publish").value();
    let mut publish = Publish {
        yggdrasil: listed.is_none(),
        etcd_naming: None,
    };
    let mut wants_naming = false;
    if let Some(list) = &listed {
        if list.is_empty() {
            list.error(format!(
                "lists no format: write one or both of {PUBLISH_FORMATS}"
            ));
        }
        for item in list.items() {
            let format = item.string().check(|f| match f.as_str() {
                "yggdrasil" | "etcd-naming" => Ok(()),
                other => Err(format!(
                    "unknown format `{other}`: the formats are {PUBLISH_FORMATS}"
                )),
            });
            match format.valid().as_deref() {
                Some("yggdrasil") => publish.yggdrasil = true,
                Some("etcd-naming") => wants_naming = true,
                _ => {}
            }
        }
    }
    let unused = "set, but `agent.publish` does not list etcd-naming: no naming keys are written";
    let naming = naming.warn(|_| (!wants_naming).then(|| unused.to_string()));
    let naming = naming.value().map(read_etcd_naming);
    if wants_naming {
        publish.etcd_naming = Some(naming.unwrap_or_default());
    }
    publish
}

const PUBLISH_FORMATS: &str = "`yggdrasil` and `etcd-naming`";

fn read_etcd_naming(mut map: Section) -> EtcdNaming {
    #[rustfmt::skip]
    let naming = EtcdNaming {
        prefix: map.string_or_empty("prefix").check(|p| printable(p)).or_default(),
        targets: map.string_map("targets").check(|targets| {
            let problems: Vec<String> = (targets.iter())
                .filter_map(|(service, target)| {
                    let problem = naming_service(service).and_then(|()| naming_target(target)).err()?;
                    Some(format!("`{service}`: {problem}"))
                })
                .collect();
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }).or_default(),
    };
    map.finish(Unknown::Error);
    naming
}

/// A key of `etcdNaming.targets`: `<namespace>/<name>`.
fn naming_service(service: &str) -> Result<(), String> {
    match service.split_once('/') {
        Some((namespace, name)) if !name.contains('/') => {
            check_segment("namespace", namespace).and_then(|()| check_segment("name", name))
        }
        _ => Err("name a service as `<namespace>/<name>`".into()),
    }
}

/// A naming target: the part of the key before `/<address>`.
fn naming_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.starts_with('/') || target.ends_with('/') {
        return Err(format!(
            "target `{target}` must be non-empty and not begin or end with `/`"
        ));
    }
    if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "target `{target}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Warns about targets that are a prefix of another (etcd's resolver reads
/// every key that starts with the target, without a `/` after it, so a
/// client of `svc` also gets `svc-canary`'s endpoints) and about naming
/// keys two instances would both write.
fn check_naming_targets(
    naming: &EtcdNaming,
    instances: &[Instance],
    at: &YamlPath,
    report: &Report,
) {
    let targets: BTreeSet<String> = instances.iter().map(|i| naming.target(i)).collect();
    for short in &targets {
        for long in targets.range::<String, _>((Excluded(short), Unbounded)) {
            if !long.starts_with(short.as_str()) {
                break;
            }
            report.warning(
                at,
                None,
                format!(
                    "etcd-naming target `{short}` is a prefix of `{long}`: etcd's resolver reads every key \
                     that starts with its target, so a client of `{short}` also gets the endpoints of `{long}` \
                     (choose targets where neither is a prefix of the other, e.g. `{short}/main` and `{long}`)"
                ),
            );
        }
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for instance in instances {
        for key in record::naming_keys(&naming.target(instance), instance) {
            let label = instance.service_label();
            if let Some(first) = seen.insert(key.clone(), label.clone()) {
                report.warning(
                    at,
                    None,
                    format!("services {first} and {label} both have the etcd-naming key `{key}`: only {first}'s is written"),
                );
            }
        }
    }
}

/// The local-control keys of `agent`.
fn read_local(agent: &mut Section, base: &Path, defaults: &CheckTiming) -> LocalConfig {
    #[rustfmt::skip]
    let local = LocalConfig {
        drain_delay: agent.duration("drainDelay").or(DEFAULT_DRAIN_DELAY),
        instances_dir: agent.path("instancesDir", base).check(|d| folder(d)).value(),
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
        .check(|f| secret::private_file("the file", f));
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

/// The instances of one file of `agent.instancesDir`: what it must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancesFile {
    pub instances: Vec<Instance>,
    /// `checks[i]` are the health checks of `instances[i]`.
    pub checks: Vec<Vec<CheckConfig>>,
    pub warnings: Vec<ConfigIssue>,
}

/// Validates one file of `agent.instancesDir`: a YAML list of instances in
/// the `agent.instances[]` schema, read by the same readers (same rules,
/// same wording; paths like `[0].endpoints`), their checks starting from
/// `defaults` (`agent.checks` of the config).
pub fn parse_instances(
    text: &str,
    defaults: &CheckTiming,
) -> Result<InstancesFile, Vec<ConfigIssue>> {
    if text.trim().is_empty() {
        return Err(vec![ConfigIssue {
            path: YamlPath::default().to_string(),
            line: None,
            message: "the file is empty (write `[]` for no instances)".into(),
        }]);
    }
    let document = Document::parse_list(text).map_err(|issue| vec![issue])?;
    let report = Report::default();
    let list = document.root(&report).list().value();
    let (instances, checks) = list
        .map(|l| read_instances(&l, defaults, &report))
        .unwrap_or_default();
    let (errors, warnings) = report.into_issues();
    if errors.is_empty() {
        Ok(InstancesFile {
            instances,
            checks,
            warnings,
        })
    } else {
        Err(errors)
    }
}

fn read_admin(mut admin: Section) -> Option<AdminConfig> {
    let listen = admin.string("listen").parse(socket_address);
    let listen = listen.required("missing (remove `admin` to turn the admin server off)");
    admin.finish(Unknown::Error);
    Some(AdminConfig { listen: listen? })
}

/// Checks each instance, then that no two share an etcd key. The second
/// list holds each instance's health checks, index for index: an instance
/// in error is left out of both.
fn read_instances(
    list: &List,
    defaults: &CheckTiming,
    report: &Report,
) -> (Vec<Instance>, Vec<Vec<CheckConfig>>) {
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut instances = Vec::new();
    let mut all_checks = Vec::new();
    for (i, item) in list.items().enumerate() {
        let instance = item.section().value();
        let read = instance.and_then(|map| read_instance(map, defaults, report));
        let Some((instance, checks)) = read else {
            continue;
        };
        let label = format!(
            "{}/{}/{}",
            instance.namespace,
            instance.name,
            record::instance_key(&instance)
        );
        if let Some(first) = keys.insert(label.clone(), i) {
            item.error(format!(
                "same instance key as {}[{first}] ({label}): change its version, endpoints or metadata.instance_id",
                list.yaml_path()
            ));
        }
        if let Some(warning) = invisible_endpoints(&instance) {
            item.warning(warning);
        }
        instances.push(instance);
        all_checks.push(checks);
    }
    (instances, all_checks)
}

/// An instance and its checks, or `None` if anything in it is wrong
/// (reported).
fn read_instance(
    mut map: Section,
    defaults: &CheckTiming,
    report: &Report,
) -> Option<(Instance, Vec<CheckConfig>)> {
    let errors_before = report.error_count();
    #[rustfmt::skip]
    let mut instance = Instance {
        namespace: map.string("namespace").filter(|ns| !ns.is_empty())
            .check(|ns| check_segment("namespace", ns)).or(DEFAULT_NAMESPACE.into()),
        name: map.string("name").check(|name| check_segment("name", name))
            .required("missing: every instance needs the service name").unwrap_or_default(),
        version: map.string("version").check(|v| printable(v)).or_default(),
        region: map.string("region").check(|v| printable(v)).or_default(),
        zone: map.string("zone").check(|v| printable(v)).or_default(),
        campus: map.string("campus").check(|v| printable(v)).or_default(),
        metadata: map.string_map("metadata").check_entry(INSTANCE_ID_KEY, check_instance_id).or_default(),
        endpoints: Vec::new(),
    };
    // A check without an address targets one of these: it is told only
    // about a list read without errors, so it never blames a missing
    // endpoint that is really one written wrong.
    let endpoint_errors = report.error_count();
    instance.endpoints = (map.list("endpoints").required("at least one endpoint"))
        .map(read_endpoints)
        .unwrap_or_default();
    let endpoints = (report.error_count() == endpoint_errors).then_some(&instance.endpoints[..]);
    let checks = map.list("checks").value();
    let checks = checks
        .map(|list| read_checks(&list, &instance, endpoints, defaults))
        .unwrap_or_default();
    map.finish(Unknown::Error);
    (report.error_count() == errors_before).then_some((instance, checks))
}

fn read_endpoints(list: List) -> Vec<Endpoint> {
    if list.is_empty() {
        list.error("at least one endpoint");
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    // Where each of `endpoints` is in the list (entries in error are not).
    let mut indices: Vec<usize> = Vec::new();
    for (i, item) in list.items().enumerate() {
        let Some(mut map) = item.section().value() else {
            continue;
        };
        #[rustfmt::skip]
        let (scheme, address, metadata) = (
            map.string("scheme").check(|s| check_scheme(s)).required("missing (e.g. grpc, http)"),
            map.string("address").check(|a| check_address(a)).required("missing (e.g. 10.0.0.1:8080)"),
            map.string_map("metadata").or_default(),
        );
        map.finish(Unknown::Error);
        let (Some(scheme), Some(address)) = (scheme, address) else {
            continue;
        };
        let same = |e: &Endpoint| e.scheme == scheme && e.address == address;
        if let Some(first) = endpoints.iter().position(same) {
            item.error(format!(
                "{scheme}://{address} is listed twice (also at {})",
                list.yaml_path().index(indices[first])
            ));
        }
        indices.push(i);
        endpoints.push(Endpoint {
            scheme,
            address,
            metadata,
        });
    }
    endpoints
}

/// How often and how strictly checks run: `agent.checks`, or one check's
/// own settings over it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTiming {
    interval: Duration,
    timeout: Duration,
    success_before_passing: u32,
    failures_before_critical: u32,
    initial_status: CheckStatus,
    /// Where `interval` and `timeout` were set, for the message about a
    /// check that sets only one of them: ` (agent.checks.interval)`.
    interval_from: String,
    timeout_from: String,
}

impl Default for CheckTiming {
    fn default() -> Self {
        CheckTiming {
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            success_before_passing: DEFAULT_SUCCESS_BEFORE_PASSING,
            failures_before_critical: DEFAULT_FAILURES_BEFORE_CRITICAL,
            initial_status: DEFAULT_INITIAL_STATUS,
            interval_from: " (the default)".into(),
            timeout_from: " (the default)".into(),
        }
    }
}

/// `agent.checks`: the settings every check starts from.
fn read_check_defaults(mut map: Section) -> CheckTiming {
    let timing = read_check_timing(&mut map, &CheckTiming::default());
    map.finish(Unknown::Error);
    timing
}

/// The timing keys of `agent.checks` or of one check, over `inherited`.
fn read_check_timing(map: &mut Section, inherited: &CheckTiming) -> CheckTiming {
    let interval = map.duration("interval").min(MIN_CHECK_INTERVAL);
    let timeout = map.duration("timeout").nonzero();
    let (interval_from, timeout_from) = (
        interval.get().map_or_else(
            || inherited.interval_from.clone(),
            |_| written_at(map, "interval"),
        ),
        timeout.get().map_or_else(
            || inherited.timeout_from.clone(),
            |_| written_at(map, "timeout"),
        ),
    );
    let (interval, timeout) = timeout_below_interval(interval, timeout, inherited);
    #[rustfmt::skip]
    let timing = CheckTiming {
        interval: interval.or(inherited.interval),
        timeout: timeout.or(inherited.timeout),
        success_before_passing: map.count("successBeforePassing").min(1).or(inherited.success_before_passing),
        failures_before_critical: map.count("failuresBeforeCritical").min(1).or(inherited.failures_before_critical),
        initial_status: map.string("initialStatus").parse(check_status).or(inherited.initial_status),
        interval_from,
        timeout_from,
    };
    timing
}

/// ` (agent.checks.interval)`: where a setting others inherit was written.
fn written_at(map: &Section, key: &str) -> String {
    format!(" ({})", map.key_path(key))
}

/// A check must end before the next one starts. Reported at the key this
/// mapping sets (the timeout when it sets both); when it sets neither, the
/// inherited pair was checked where it was written.
fn timeout_below_interval<'a>(
    interval: Field<'a, Duration>,
    timeout: Field<'a, Duration>,
    inherited: &CheckTiming,
) -> (Field<'a, Duration>, Field<'a, Duration>) {
    const WHY: &str = "a check must end before the next one starts";
    match (interval.get().copied(), timeout.get().is_some()) {
        (written, true) => {
            let (i, from) = match written {
                Some(i) => (i, ""),
                None => (inherited.interval, inherited.interval_from.as_str()),
            };
            let timeout = timeout.check(|t| {
                (*t < i)
                    .then_some(())
                    .ok_or_else(|| format!("{t:?} is not below the interval of {i:?}{from}: {WHY}"))
            });
            (interval, timeout)
        }
        (Some(_), false) => {
            let (t, from) = (inherited.timeout, &inherited.timeout_from);
            let interval = interval.check(|i| {
                (t < *i)
                    .then_some(())
                    .ok_or_else(|| format!("{i:?} is not above the timeout of {t:?}{from}: {WHY}"))
            });
            (interval, timeout)
        }
        (None, false) => (interval, timeout),
    }
}

/// The kinds of check, each the key that holds its target.
/// (`plugin` holds the plugin's name; its target is `target`.)
const CHECK_KINDS: [&str; 4] = ["tcp", "http", "grpc", "plugin"];

/// Options only one kind of check has, and that kind.
const KIND_OPTIONS: [(&str, &str); 7] = [
    ("method", "http"),
    ("headers", "http"),
    ("tlsSkipVerify", "http"),
    ("service", "grpc"),
    ("tls", "grpc"),
    ("target", "plugin"),
    ("settings", "plugin"),
];

/// `instances[].checks`: each valid check, then that no two are the same.
/// `endpoints` is `None` when the instance's endpoints are in error.
fn read_checks(
    list: &List,
    instance: &Instance,
    endpoints: Option<&[Endpoint]>,
    defaults: &CheckTiming,
) -> Vec<CheckConfig> {
    let mut checks: Vec<CheckConfig> = Vec::new();
    // Where each of `checks` is in the list (entries in error are not).
    let mut indices: Vec<usize> = Vec::new();
    for (i, item) in list.items().enumerate() {
        let Some(check) = read_check(&item, instance, endpoints, defaults) else {
            continue;
        };
        if let Some(first) = checks.iter().position(|c| c.probe == check.probe) {
            item.error(format!(
                "the same check as {} ({}): keep one",
                list.yaml_path().index(indices[first]),
                probe_label(&check.probe)
            ));
        }
        indices.push(i);
        checks.push(check);
    }
    checks
}

/// One check: exactly one kind key with its target, timing over the
/// defaults, and the options of its kind.
fn read_check(
    item: &Value,
    instance: &Instance,
    endpoints: Option<&[Endpoint]>,
    defaults: &CheckTiming,
) -> Option<CheckConfig> {
    let mut map = item.section().value()?;
    let mut kinds: Vec<(&str, Field<String>)> = (CHECK_KINDS.iter())
        .map(|kind| (*kind, map.string_or_empty(kind)))
        .filter(|(_, target)| !target.is_absent())
        .collect();
    let timing = read_check_timing(&mut map, defaults);
    let probe = match kinds.len() {
        1 => {
            let (kind, target) = kinds.remove(0);
            read_probe(&mut map, kind, target, instance, endpoints)
        }
        written => {
            // Options of every kind are read (and checked) so that only
            // the kind is reported.
            let _ = (read_http_options(&mut map), read_grpc_options(&mut map));
            let _ = (
                map.string("target").value(),
                map.string_map("settings").value(),
            );
            if written > 1 {
                let (first, (second, target)) = (kinds[0].0, &kinds[1]);
                target.error(format!(
                    "a check has one kind, and this one is already `{first}`: write a second check for `{second}`"
                ));
            } else if map.has_unread() {
                map.finish_as(
                    Unknown::Error,
                    "not a check kind: use tcp, http, grpc or plugin",
                );
                return None;
            } else {
                item.error(r#"no check kind: write one of tcp, http, grpc or plugin (e.g. `- tcp: "127.0.0.1:8080"`)"#);
            }
            None
        }
    };
    map.finish(Unknown::Error);
    Some(CheckConfig {
        probe: probe?,
        interval: timing.interval,
        timeout: timing.timeout,
        success_before_passing: timing.success_before_passing,
        failures_before_critical: timing.failures_before_critical,
        initial_status: timing.initial_status,
    })
}

/// The probe of a `kind` check whose target (`""`: none given) is `target`.
fn read_probe(
    map: &mut Section,
    kind: &str,
    target: Field<String>,
    instance: &Instance,
    endpoints: Option<&[Endpoint]>,
) -> Option<Probe> {
    for (key, owner) in KIND_OPTIONS {
        if owner != kind
            && let Some(value) = map.get(key)
        {
            value.error(format!(
                "`{key}` is for {owner} checks only, and this check is {kind}"
            ));
        }
    }
    match kind {
        "tcp" => Some(Probe::Tcp {
            address: address_target(target, kind, endpoints)?,
        }),
        "plugin" => {
            let plugin = target
                .check(|name| match name.as_str() {
                    "" => Err("no plugin named: write the check plugin's name (its file name without .wasm)".into()),
                    name => plugin_name(name),
                })
                .valid();
            let targets = plugin_targets(map.string("target"), endpoints);
            let settings = map.string_map("settings").or_default();
            Some(Probe::Plugin {
                plugin: plugin?,
                targets: targets?,
                settings,
                instance: Box::new(instance.clone()),
            })
        }
        "grpc" => {
            let (service, tls) = read_grpc_options(map);
            Some(Probe::Grpc {
                address: address_target(target, kind, endpoints)?,
                service,
                tls,
            })
        }
        _ => {
            let (method, headers, tls_skip_verify) = read_http_options(map);
            Some(Probe::Http {
                url: url_target(target, endpoints)?,
                method,
                headers,
                tls_skip_verify,
            })
        }
    }
}

fn read_http_options(map: &mut Section) -> (String, BTreeMap<String, String>, bool) {
    #[rustfmt::skip]
    let options = (
        map.string("method").check(|m| http_method(m)).or(DEFAULT_HTTP_METHOD.into()),
        map.string_map("headers").check(http_headers).or_default(),
        map.boolean("tlsSkipVerify").or(false),
    );
    options
}

fn read_grpc_options(map: &mut Section) -> (String, bool) {
    #[rustfmt::skip]
    let options = (
        map.string("service").check(|s| printable(s)).or_default(),
        map.boolean("tls").or(false),
    );
    options
}

/// Where a tcp or grpc check connects: its written `host:port`, or else
/// the instance's first endpoint (tcp) or first grpc endpoint (grpc).
fn address_target(
    target: Field<String>,
    kind: &str,
    endpoints: Option<&[Endpoint]>,
) -> Option<String> {
    if !target.get()?.is_empty() {
        return target.check(|a| host_and_port(a)).valid();
    }
    let own = endpoints?
        .iter()
        .find(|e| kind == "tcp" || e.scheme.eq_ignore_ascii_case(kind));
    let Some(own) = own else {
        let which = if kind == "tcp" {
            String::new()
        } else {
            format!("{kind} ")
        };
        target.error(format!(
            "no address given and the instance has no {which}endpoint to check"
        ));
        return None;
    };
    if let Err(problem) = host_and_port(&own.address) {
        let which = if kind == "tcp" { "first" } else { kind };
        target.error(format!(
            "no address given, and the instance's {which} endpoint cannot be checked: {problem}"
        ));
        return None;
    }
    Some(own.address.clone())
}

/// Where a plugin check may connect: its written `target` (`host:port`),
/// or else every endpoint of the instance.
fn plugin_targets(target: Field<String>, endpoints: Option<&[Endpoint]>) -> Option<Vec<String>> {
    if !target.is_absent() {
        return target.check(|a| host_and_port(a)).valid().map(|a| vec![a]);
    }
    let addresses: Vec<String> = endpoints?
        .iter()
        .map(|e| e.address.clone())
        .filter(|a| host_and_port(a).is_ok())
        .collect();
    if addresses.is_empty() {
        target.error(
            "no target given and none of the instance's endpoints is a host:port to connect to",
        );
        return None;
    }
    Some(addresses)
}

/// The URL an http check asks: its written one, or else the instance's
/// first http or https endpoint as `http(s)://<address>/`.
fn url_target(target: Field<String>, endpoints: Option<&[Endpoint]>) -> Option<String> {
    if !target.get()?.is_empty() {
        return target.check(|url| http_url(url)).valid();
    }
    let web = |e: &&Endpoint| {
        ["http", "https"]
            .iter()
            .any(|s| e.scheme.eq_ignore_ascii_case(s))
    };
    let Some(own) = endpoints?.iter().find(web) else {
        target.error("no URL given and the instance has no http or https endpoint to check");
        return None;
    };
    let scheme = own.scheme.to_ascii_lowercase();
    let url = format!("{scheme}://{}/", own.address);
    if let Err(problem) = http_url(&url) {
        target.error(format!(
            "no URL given, and the instance's {scheme} endpoint cannot be checked: {problem}"
        ));
        return None;
    }
    Some(url)
}

/// How a probe is named in messages: its kind and target.
fn probe_label(probe: &Probe) -> String {
    match probe {
        Probe::Tcp { address } => format!("tcp {address}"),
        Probe::Http { method, url, .. } => format!("http {method} {}", redact_url(url)),
        Probe::Grpc { address, .. } => format!("grpc {address}"),
        Probe::Plugin {
            plugin, targets, ..
        } => format!("plugin {plugin} {}", targets.join(",")),
    }
}

fn read_plugins(mut map: Section, base: &Path) -> PluginsConfig {
    #[rustfmt::skip]
    let config = PluginsConfig {
        dir: map.path("dir", base).default(base.join(DEFAULT_PLUGINS_DIR)).check(|d| folder(d)).or_default(),
        interval: map.duration("interval").min(MIN_PLUGIN_INTERVAL).or(DEFAULT_PLUGIN_INTERVAL),
        timeout: map.duration("timeout").min(MIN_PLUGIN_TIMEOUT).or(DEFAULT_PLUGIN_TIMEOUT),
        memory_limit: map.size("memoryLimit")
            .within(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY, "must be between 2MiB and 4GiB").or(DEFAULT_PLUGIN_MEMORY),
        settings: map.section("settings").value().map(read_settings).unwrap_or_default(),
        cache_dir: map.path("cacheDir", base).value(),
        min_rewrite_interval: map.duration("minRewriteInterval").nonzero().value(),
    };
    map.finish(Unknown::Error);
    config
}

/// `settings.<plugin>`: a mapping of plain values (or null) per plugin.
fn read_settings(settings: Section) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, values) in settings.entries() {
        if let Some(name) = name.check(|name| plugin_name(name)).valid()
            && let Some(values) = values.string_map().value()
        {
            out.insert(name, values);
        }
    }
    out
}

// The rules: pure checks and conversions of one value, with the message.

fn etcd_only(kind: &str) -> Result<(), String> {
    match kind {
        "etcd" => Ok(()),
        _ => Err(format!(
            "`{kind}` is not supported: the agent registers in etcd only (type: etcd)"
        )),
    }
}

/// A prefix starts with `/` and has no empty segment before its trailing
/// `/`s (those are allowed: Go keeps them, see [`trailing_slash`]).
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!(
            "`{prefix}` must start with `/` (e.g. /yggdrasil/registry)"
        ));
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.split('/').skip(1).any(str::is_empty) {
        return Err(format!("`{prefix}` has an empty path segment"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{prefix}` contains white space"));
    }
    Ok(())
}

/// Go joins the prefix and the namespace with a `/` of its own, so a
/// trailing `/` puts a double slash in every key, and apps sharing the
/// registry must agree on it byte for byte.
fn trailing_slash(prefix: &str) -> Option<String> {
    if !prefix.ends_with('/') {
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    let advice = if trimmed.is_empty() {
        "use a prefix such as /yggdrasil/registry unless every app sharing the registry uses `/` too".to_string()
    } else {
        format!("write `{trimmed}` unless every app sharing the registry writes `{prefix}` too")
    };
    Some(format!(
        "`{prefix}` ends with `/`, and the prefix is used as written (as Yggdrasil's Go registry does): \
         keys are `{prefix}/<namespace>/<name>/<id>`, with a double slash. A Go app configured with \
         `{prefix}` sees these instances; one configured without the trailing `/` does not: {advice}"
    ))
}

/// The endpoints a Yggdrasil Go client with the default resolver drops
/// (its `protocols` list keeps only grpc and http), as one warning.
fn invisible_endpoints(instance: &Instance) -> Option<String> {
    let invisible: Vec<String> = (instance.endpoints.iter())
        .filter(|e| !YGGDRASIL_DEFAULT_PROTOCOLS.contains(&e.scheme.as_str()))
        .map(ToString::to_string)
        .collect();
    if invisible.is_empty() {
        return None;
    }
    let (noun, verb) = match invisible.len() {
        1 => ("endpoint", "is"),
        _ => ("endpoints", "are"),
    };
    let all = if invisible.len() == instance.endpoints.len() {
        ", so such a client sees none of this instance"
    } else {
        ""
    };
    Some(format!(
        "service {}/{}: {noun} {} {verb} invisible to a Yggdrasil client with the default resolver, \
         which keeps only the schemes grpc and http{all} (add the scheme to the resolver's `protocols` \
         if a Yggdrasil client should see it)",
        instance.namespace,
        instance.name,
        invisible.join(", ")
    ))
}

fn whole_seconds(ttl: &Duration) -> Result<(), String> {
    if ttl.subsec_nanos() == 0 {
        Ok(())
    } else {
        Err(format!(
            "{ttl:?} is not a whole number of seconds (etcd leases count in seconds)"
        ))
    }
}

/// `host:port`, `http://host:port` or `https://host:port`.
fn check_etcd_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || {
        format!(
            "`{}` is not an etcd address (expected host:port, e.g. 127.0.0.1:2379 or [::1]:2379)",
            endpoint.escape_debug()
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    // A host name or IPv4 address, or an IPv6 address in brackets.
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !valid_host {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "`{}` has an invalid port `{}`",
            endpoint.escape_debug(),
            port.escape_debug()
        )),
    }
}

fn check_status(text: String) -> Result<CheckStatus, String> {
    match text.as_str() {
        "passing" => Ok(CheckStatus::Passing),
        "critical" => Ok(CheckStatus::Critical),
        other => Err(format!(
            "`{}` is not a status (expected passing or critical)",
            other.escape_debug()
        )),
    }
}

/// `host:port` with a port above 0; an IPv6 host in brackets (`[::1]:80`).
fn host_and_port(address: &str) -> Result<(), String> {
    let shown = address.escape_debug();
    const EXPECTED: &str = "expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080";
    let no_port = || Err(format!("`{shown}` has no port ({EXPECTED})"));
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        return no_port();
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return no_port();
    };
    if !valid_host(host) {
        return Err(format!("`{shown}` is not an address ({EXPECTED})"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ if port.is_empty() => no_port(),
        _ => Err(format!(
            "`{shown}` has an invalid port `{}`",
            port.escape_debug()
        )),
    }
}

/// A host name or IPv4 address, or an IPv6 address in brackets.
fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && (host.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    }
}

/// `http://` or `https://`, a host with an optional port, then an optional
/// path and query of characters a URL may hold unencoded.
fn http_url(url: &str) -> Result<(), String> {
    let shown = url.escape_debug();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{shown}` has no scheme (write http://{shown} or https://{shown})"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{shown}` is not an http:// or https:// URL"));
    }
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_len);
    if authority.contains('@') {
        return Err(format!(
            "`{shown}` holds a user name or password: send credentials in `headers` (they would show in logs)"
        ));
    }
    // `host` or `host:port`; a bracketed IPv6 host has colons of its own.
    let valid_authority = if authority.contains(':') && !authority.ends_with(']') {
        host_and_port(authority).is_ok()
    } else {
        valid_host(authority)
    };
    if !valid_authority {
        return Err(format!(
            "`{shown}` has no valid host (e.g. http://127.0.0.1:8080/health)"
        ));
    }
    let unencoded = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c);
    match path.chars().find(|c| !unencoded(*c)) {
        Some(c) => Err(format!(
            "`{shown}` holds `{}`, which a URL cannot hold unencoded (write it as %XX)",
            c.escape_debug()
        )),
        None => Ok(()),
    }
}

/// An HTTP method is a token (RFC 9110): `GET`, `HEAD`, `PROPFIND`.
fn http_method(method: &str) -> Result<(), String> {
    if !method.is_empty() && method.chars().all(is_token_char) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an HTTP method (e.g. GET, HEAD)",
            method.escape_debug()
        ))
    }
}

/// Header names are tokens; values are printable ASCII (a line break would
/// smuggle in another header; other bytes are refused by HTTP libraries).
fn http_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in headers {
        if !name.chars().all(is_token_char) {
            return Err(format!(
                "`{}` is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
                name.escape_debug()
            ));
        }
        if value
            .chars()
            .any(|c| !c.is_ascii() || (c.is_control() && c != '\t'))
        {
            return Err(format!(
                "the value of `{name}` holds control or non-ASCII characters"
            ));
        }
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn readable_file(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else {
        Err(format!("{} is not a readable file", path.display()))
    }
}

fn folder(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a folder", path.display()))
    }
}

fn socket_address(text: String) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IP address and port (e.g. 127.0.0.1:9901)"))
}

/// A namespace or service name becomes one segment of an etcd key.
fn check_segment(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"));
    }
    if value.contains('/') || value == "." || value == ".." {
        return Err(format!(
            "{what} `{value}` cannot contain `/` or be `.` or `..` (it is one segment of the etcd key)"
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} `{value}` contains white space"));
    }
    Ok(())
}

fn printable(value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        Err("contains control characters".into())
    } else {
        Ok(())
    }
}

/// `metadata.instance_id` becomes the etcd key's last segment.
fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > INSTANCE_ID_MAX_LEN {
        Err(format!("must be 1 to {INSTANCE_ID_MAX_LEN} characters"))
    } else if id.contains('/')
        || id == "."
        || id == ".."
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(format!(
            "`{}` cannot contain `/` or white space, or be `.` or `..` (it becomes the etcd key's last segment)",
            id.escape_debug()
        ))
    } else {
        Ok(())
    }
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!("`{scheme}` is not a scheme (e.g. grpc, http, tcp)"))
    }
}

fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "`{address}` is not an address (e.g. 10.0.0.1:8080)"
        ))
    } else {
        Ok(())
    }
}

fn plugin_name(name: &str) -> Result<(), String> {
    if is_plugin_name(name) {
        Ok(())
    } else {
        Err("not a plugin name (letters, digits, `_`, `-`, `.`)".into())
    }
}

/// Plugin names are file stems: `load` for `load.wasm`.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests;
