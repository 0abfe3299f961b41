//! The agent's configuration: the validated types the rest of the program uses
//! and [`load`], the only way to make them. This module and its children are
//! the only code that knows the file is YAML.
//!
//! Parsing is two-phase: the YAML tree (with line numbers) is walked once,
//! every problem is collected with its path, and only a file without errors
//! becomes a [`Config`].

mod units;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Node;
use sha2::Digest;

use crate::record::{
    self, DEFAULT_NAMESPACE, Endpoint, INSTANCE_ID_KEY, INSTANCE_ID_MAX_LEN, Instance,
};
use yaml::{Mapping, Report, Unknown, YamlPath};

pub use units::{parse_duration, parse_size};

/// etcd address used when `client.endpoints` is absent (the seed's default).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PREFIX: &str = "/yggdrasil/registry";
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// etcd cannot keep a lease shorter than about 1.5 election timeouts.
pub const MIN_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(3);
pub const MIN_RETRY_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// Starts with `/`, never ends with one.
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

/// A string that must never reach a log: Debug and Display print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
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
    pub plugins: Option<PluginsConfig>,
    pub admin: Option<AdminConfig>,
    pub shutdown_timeout: Duration,
}

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
}

/// `agent.admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            client: ClientConfig {
                endpoints: vec![DEFAULT_ENDPOINT.to_string()],
                dial_timeout: DEFAULT_DIAL_TIMEOUT,
                credentials: None,
                tls: None,
            },
            prefix: DEFAULT_PREFIX.to_string(),
            ttl: DEFAULT_TTL,
            keep_alive: true,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// One problem in the file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// YAML path such as `agent.instances[1].endpoints`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
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
    parse(&text, &base_dir(path)).map_err(|issues| ConfigError::Invalid {
        path: path.to_path_buf(),
        issues,
    })
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
    let root_path = YamlPath::default();
    if text.trim().is_empty() {
        return Err(vec![ConfigIssue {
            path: root_path.to_string(),
            line: None,
            message: "the file is empty".into(),
        }]);
    }
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(root) => root,
        Err(e) => return Err(vec![yaml_syntax_issue(&e)]),
    };
    let mut report = Report::default();
    let config = read_root(&root, base, &mut report);
    match config {
        Some(config) if report.errors.is_empty() => Ok(Loaded {
            config,
            warnings: report.warnings,
            digest: sha2::Sha256::digest(text.as_bytes()).into(),
        }),
        _ => Err(report.errors),
    }
}

fn yaml_syntax_issue(error: &marked_yaml::LoadError) -> ConfigIssue {
    use marked_yaml::LoadError as E;
    let (line, message) = match error {
        E::TopLevelMustBeMapping(m) => (
            Some(m.line()),
            "the file must be a mapping with `yggdrasil:` and `agent:` sections".to_string(),
        ),
        E::UnexpectedAnchor(m) => (
            Some(m.line()),
            "YAML anchors and aliases are not supported".into(),
        ),
        E::UnexpectedTag(m) => (
            Some(m.line()),
            "YAML tags (`!foo`) are not supported".into(),
        ),
        E::MappingKeyMustBeScalar(m) => {
            (Some(m.line()), "mapping keys must be plain values".into())
        }
        E::DuplicateKey(inner) => (
            inner.key.span().start().map(|m| m.line()),
            format!(
                "duplicate key `{}` (first seen on line {})",
                inner.key.as_str(),
                inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
        E::ScanError(m, e) => (Some(m.line()), format!("YAML syntax error: {e}")),
        other => (None, format!("YAML error: {other}")),
    };
    ConfigIssue {
        path: "(syntax)".into(),
        line,
        message,
    }
}

fn read_root(root: &Node, base: &Path, report: &mut Report) -> Option<Config> {
    let mut top = yaml::mapping(root, YamlPath::default(), report)?;
    let registry = match top.get("yggdrasil") {
        Some((node, path)) => read_yggdrasil(node, path, base, report),
        None => RegistryConfig::default(),
    };
    let agent = match top.get("agent") {
        Some((node, path)) => read_agent(node, path, base, report),
        None => {
            report.warning(
                &YamlPath::default().key("agent"),
                None,
                "no agent section: nothing to register",
            );
            empty_agent()
        }
    };
    // Other top-level keys belong to the application sharing the file.
    top.finish(report, Unknown::Ignore);
    Some(Config { registry, agent })
}

fn empty_agent() -> AgentConfig {
    AgentConfig {
        instances: Vec::new(),
        plugins: None,
        admin: None,
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
    }
}

fn read_yggdrasil(node: &Node, path: YamlPath, base: &Path, report: &mut Report) -> RegistryConfig {
    let mut out = RegistryConfig::default();
    let Some(mut ygg) = yaml::mapping(node, path, report) else {
        return out;
    };
    if let Some((node, path)) = ygg.get("registry")
        && let Some(mut registry) = yaml::mapping(node, path, report)
    {
        if let Some((node, path)) = registry.get("type")
            && let Some(kind) = yaml::string(node, &path, report)
            && kind != "etcd"
        {
            report.error(
                &path,
                Some(node.span()),
                format!("`{kind}` is not supported: the agent registers in etcd only (type: etcd)"),
            );
        }
        if let Some((node, path)) = registry.get("config") {
            read_registry_config(node, path, base, &mut out, report);
        }
        registry.finish(report, Unknown::Warn);
    }
    // The rest of `yggdrasil` configures the application, not us.
    ygg.finish(report, Unknown::Ignore);
    out
}

fn read_registry_config(
    node: &Node,
    path: YamlPath,
    base: &Path,
    out: &mut RegistryConfig,
    report: &mut Report,
) {
    let Some(mut cfg) = yaml::mapping(node, path, report) else {
        return;
    };
    if let Some((node, path)) = cfg.get("client") {
        read_client(node, path, base, &mut out.client, report);
    }
    if let Some((node, path)) = cfg.get("prefix")
        && let Some(prefix) = yaml::string(node, &path, report)
    {
        match normalise_prefix(&prefix) {
            Ok(prefix) => out.prefix = prefix,
            Err(message) => report.error(&path, Some(node.span()), message),
        }
    }
    if let Some((node, path)) = cfg.get("ttl")
        && let Some(ttl) = yaml::duration(node, &path, report)
    {
        if ttl < MIN_TTL {
            report.error(
                &path,
                Some(node.span()),
                format!("{ttl:?} is below the minimum of {MIN_TTL:?}"),
            );
        } else if ttl.subsec_nanos() != 0 {
            report.error(
                &path,
                Some(node.span()),
                format!("{ttl:?} is not a whole number of seconds (etcd leases count in seconds)"),
            );
        } else {
            out.ttl = ttl;
        }
    }
    if let Some((node, path)) = cfg.get("keepAlive")
        && let Some(keep_alive) = yaml::boolean(node, &path, report)
    {
        out.keep_alive = keep_alive;
    }
    if let Some((node, path)) = cfg.get("retryInterval")
        && let Some(interval) = yaml::duration(node, &path, report)
    {
        if interval < MIN_RETRY_INTERVAL {
            report.error(
                &path,
                Some(node.span()),
                format!("{interval:?} is below the minimum of {MIN_RETRY_INTERVAL:?}"),
            );
        } else {
            out.retry_interval = interval;
        }
    }
    cfg.finish(report, Unknown::Warn);
}

fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.starts_with('/') {
        return Err(format!(
            "`{prefix}` must start with `/` (e.g. /yggdrasil/registry)"
        ));
    }
    if trimmed.split('/').skip(1).any(str::is_empty) {
        return Err(format!("`{prefix}` has an empty path segment"));
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{prefix}` contains white space"));
    }
    Ok(trimmed.to_string())
}

fn read_client(
    node: &Node,
    path: YamlPath,
    base: &Path,
    out: &mut ClientConfig,
    report: &mut Report,
) {
    let Some(mut client) = yaml::mapping(node, path.clone(), report) else {
        return;
    };
    if let Some((node, path)) = client.get("endpoints")
        && let Some(items) = yaml::sequence(node, &path, report)
    {
        let mut endpoints = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = path.index(i);
            if let Some(endpoint) = yaml::string(item, &item_path, report) {
                match check_etcd_endpoint(&endpoint) {
                    Ok(()) => endpoints.push(endpoint),
                    Err(message) => report.error(&item_path, Some(item.span()), message),
                }
            }
        }
        if items.is_empty() {
            report.error(
                &path,
                Some(node.span()),
                "at least one etcd endpoint is needed",
            );
        } else {
            out.endpoints = endpoints;
        }
    }
    if let Some((node, path)) = client.get("dialTimeout")
        && let Some(timeout) = yaml::duration(node, &path, report)
    {
        if timeout.is_zero() {
            report.error(&path, Some(node.span()), "must be longer than 0");
        } else {
            out.dial_timeout = timeout;
        }
    }
    let username = client
        .get("username")
        .and_then(|(node, path)| yaml::string(node, &path, report).map(|s| (s, path, node)));
    let password = client
        .get("password")
        .and_then(|(node, path)| yaml::string(node, &path, report).map(|s| (s, path, node)));
    match (username, password) {
        (Some((user, _, _)), Some((password, _, _))) if !user.is_empty() => {
            out.credentials = Some(Credentials {
                username: user,
                password: Secret::new(password),
            });
        }
        (Some((user, path, node)), None) if !user.is_empty() => {
            report.error(
                &path,
                Some(node.span()),
                "a username needs a password beside it",
            );
        }
        (_, Some((password, path, node))) if !password.is_empty() => {
            // Never echo the password itself.
            report.error(
                &path,
                Some(node.span()),
                "a password needs a username beside it",
            );
        }
        _ => {}
    }
    if let Some((node, path)) = client.get("tls") {
        out.tls = read_tls(node, path, base, report);
    }
    let tls_path = path.key("tls");
    for (i, endpoint) in out.endpoints.iter().enumerate() {
        let at = path.key("endpoints").index(i);
        if out.tls.is_some() && endpoint.starts_with("http://") {
            report.error(
                &at,
                None,
                format!(
                    "`{endpoint}` is plain http but {tls_path} is set: write host:port or https://"
                ),
            );
        }
        if out.tls.is_none() && endpoint.starts_with("https://") {
            report.error(&at, None, format!("`{endpoint}` is https: set {tls_path}.caFile to the CA that signed etcd's certificate"));
        }
    }
    client.finish(report, Unknown::Warn);
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

fn read_tls(node: &Node, path: YamlPath, base: &Path, report: &mut Report) -> Option<TlsConfig> {
    let mut tls = yaml::mapping(node, path.clone(), report)?;
    let span = tls.span();
    let file = |tls: &mut Mapping, key: &'static str, report: &mut Report| -> Option<PathBuf> {
        let (node, path) = tls.get(key)?;
        let text = yaml::string(node, &path, report)?;
        let resolved = base.join(&text);
        if !resolved.is_file() {
            report.error(
                &path,
                Some(node.span()),
                format!("{} is not a readable file", resolved.display()),
            );
        }
        Some(resolved)
    };
    let cert = file(&mut tls, "certFile", report);
    let key = file(&mut tls, "keyFile", report);
    let ca = file(&mut tls, "caFile", report);
    tls.finish(report, Unknown::Warn);
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            report.error(
                &path.key("keyFile"),
                Some(span),
                "certFile is set but keyFile is missing",
            );
            None
        }
        (None, Some(_)) => {
            report.error(
                &path.key("certFile"),
                Some(span),
                "keyFile is set but certFile is missing",
            );
            None
        }
    };
    match ca {
        Some(ca_file) => Some(TlsConfig { ca_file, identity }),
        None => {
            report.error(
                &path.key("caFile"),
                Some(span),
                "TLS needs caFile (all three paths, or caFile only)",
            );
            None
        }
    }
}

fn read_agent(node: &Node, path: YamlPath, base: &Path, report: &mut Report) -> AgentConfig {
    let mut out = empty_agent();
    let Some(mut agent) = yaml::mapping(node, path, report) else {
        return out;
    };
    if let Some((node, path)) = agent.get("instances")
        && let Some(items) = yaml::sequence(node, &path, report)
    {
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = path.index(i);
            if let Some(instance) = read_instance(item, item_path.clone(), report) {
                let key = (
                    instance.namespace.clone(),
                    instance.name.clone(),
                    record::instance_key(&instance),
                );
                let label = format!("{}/{}/{}", key.0, key.1, key.2);
                if let Some(first) = keys.insert(label.clone(), i) {
                    report.error(&item_path, Some(item.span()), format!(
                        "same instance key as {}[{first}] ({label}): change its version, endpoints or metadata.instance_id",
                        path
                    ));
                }
                out.instances.push(instance);
            }
        }
    }
    if let Some((node, path)) = agent.get("plugins") {
        out.plugins = read_plugins(node, path, base, report);
    }
    if let Some((node, path)) = agent.get("admin")
        && let Some(mut admin) = yaml::mapping(node, path.clone(), report)
    {
        match admin.get("listen") {
            Some((node, path)) => {
                if let Some(text) = yaml::string(node, &path, report) {
                    match text.parse::<SocketAddr>() {
                        Ok(listen) => out.admin = Some(AdminConfig { listen }),
                        Err(_) => report.error(
                            &path,
                            Some(node.span()),
                            format!("`{text}` is not an IP address and port (e.g. 127.0.0.1:9901)"),
                        ),
                    }
                }
            }
            None => report.error(
                &path.key("listen"),
                Some(admin.span()),
                "missing (remove `admin` to turn the admin server off)",
            ),
        }
        admin.finish(report, Unknown::Error);
    }
    if let Some((node, path)) = agent.get("shutdownTimeout")
        && let Some(timeout) = yaml::duration(node, &path, report)
    {
        if timeout.is_zero() {
            report.error(&path, Some(node.span()), "must be longer than 0");
        } else {
            out.shutdown_timeout = timeout;
        }
    }
    agent.finish(report, Unknown::Error);
    out
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

/// A plain value with its path and node, or `None` when absent.
fn text_field<'a>(
    map: &mut Mapping<'a>,
    key: &'a str,
    report: &mut Report,
) -> Option<(String, YamlPath, &'a Node)> {
    let (node, path) = map.get(key)?;
    yaml::string(node, &path, report).map(|s| (s, path, node))
}

fn read_instance(node: &Node, path: YamlPath, report: &mut Report) -> Option<Instance> {
    let mut map = yaml::mapping(node, path.clone(), report)?;
    let span = map.span();
    let errors_before = report.errors.len();
    let namespace = match text_field(&mut map, "namespace", report) {
        Some((ns, _, _)) if ns.is_empty() => DEFAULT_NAMESPACE.to_string(),
        Some((ns, path, node)) => {
            if let Err(message) = check_segment("namespace", &ns) {
                report.error(&path, Some(node.span()), message);
            }
            ns
        }
        None => DEFAULT_NAMESPACE.to_string(),
    };
    let name = match text_field(&mut map, "name", report) {
        Some((name, path, node)) => {
            if let Err(message) = check_segment("name", &name) {
                report.error(&path, Some(node.span()), message);
            }
            name
        }
        None => {
            report.error(
                &path.key("name"),
                Some(span),
                "missing: every instance needs the service name",
            );
            String::new()
        }
    };
    let mut plain = |key: &'static str, report: &mut Report| -> String {
        match text_field(&mut map, key, report) {
            Some((value, path, node)) => {
                if value.chars().any(char::is_control) {
                    report.error(&path, Some(node.span()), "contains control characters");
                }
                value
            }
            None => String::new(),
        }
    };
    let version = plain("version", report);
    let region = plain("region", report);
    let zone = plain("zone", report);
    let campus = plain("campus", report);
    let metadata = match map.get("metadata") {
        Some((node, path)) => {
            let metadata = yaml::string_map(node, &path, report).unwrap_or_default();
            if let Some(id) = metadata.get(INSTANCE_ID_KEY) {
                let id_path = path.key(INSTANCE_ID_KEY);
                if id.is_empty() || id.chars().count() > INSTANCE_ID_MAX_LEN {
                    report.error(
                        &id_path,
                        Some(node.span()),
                        format!("must be 1 to {INSTANCE_ID_MAX_LEN} characters"),
                    );
                } else if id.contains('/')
                    || id == "."
                    || id == ".."
                    || id.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    report.error(&id_path, Some(node.span()), format!("`{}` cannot contain `/` or white space, or be `.` or `..` (it becomes the etcd key's last segment)", id.escape_debug()));
                }
            }
            metadata
        }
        None => BTreeMap::new(),
    };
    let endpoints = match map.get("endpoints") {
        Some((node, path)) => read_endpoints(node, &path, report),
        None => {
            report.error(&path.key("endpoints"), Some(span), "at least one endpoint");
            Vec::new()
        }
    };
    map.finish(report, Unknown::Error);
    (report.errors.len() == errors_before).then_some(Instance {
        namespace,
        name,
        version,
        region,
        zone,
        campus,
        metadata,
        endpoints,
    })
}

fn read_endpoints(node: &Node, path: &YamlPath, report: &mut Report) -> Vec<Endpoint> {
    let Some(items) = yaml::sequence(node, path, report) else {
        return Vec::new();
    };
    if items.is_empty() {
        report.error(path, Some(node.span()), "at least one endpoint");
    }
    let mut out: Vec<Endpoint> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(mut map) = yaml::mapping(item, item_path.clone(), report) else {
            continue;
        };
        let span = map.span();
        let scheme = match map.get("scheme") {
            Some((node, path)) => yaml::string(node, &path, report).inspect(|scheme| {
                let valid = scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
                if !valid {
                    report.error(
                        &path,
                        Some(node.span()),
                        format!("`{scheme}` is not a scheme (e.g. grpc, http, tcp)"),
                    );
                }
            }),
            None => {
                report.error(
                    &item_path.key("scheme"),
                    Some(span),
                    "missing (e.g. grpc, http)",
                );
                None
            }
        };
        let address = match map.get("address") {
            Some((node, path)) => yaml::string(node, &path, report).inspect(|address| {
                if address.is_empty()
                    || address.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    report.error(
                        &path,
                        Some(node.span()),
                        format!("`{address}` is not an address (e.g. 10.0.0.1:8080)"),
                    );
                }
            }),
            None => {
                report.error(
                    &item_path.key("address"),
                    Some(span),
                    "missing (e.g. 10.0.0.1:8080)",
                );
                None
            }
        };
        let metadata = map
            .get("metadata")
            .and_then(|(node, path)| yaml::string_map(node, &path, report))
            .unwrap_or_default();
        map.finish(report, Unknown::Error);
        if let (Some(scheme), Some(address)) = (scheme, address) {
            if let Some(first) = out
                .iter()
                .position(|e| e.scheme == scheme && e.address == address)
            {
                report.error(
                    &item_path,
                    Some(span),
                    format!(
                        "{scheme}://{address} is listed twice (also at {})",
                        path.index(first)
                    ),
                );
            }
            out.push(Endpoint {
                scheme,
                address,
                metadata,
            });
        }
    }
    out
}

fn read_plugins(
    node: &Node,
    path: YamlPath,
    base: &Path,
    report: &mut Report,
) -> Option<PluginsConfig> {
    let mut map = yaml::mapping(node, path, report)?;
    let mut out = PluginsConfig {
        dir: base.join(DEFAULT_PLUGINS_DIR),
        interval: DEFAULT_PLUGIN_INTERVAL,
        timeout: DEFAULT_PLUGIN_TIMEOUT,
        memory_limit: DEFAULT_PLUGIN_MEMORY,
        settings: BTreeMap::new(),
        cache_dir: None,
    };
    let dir_span;
    let dir_path;
    match map.get("dir") {
        Some((node, path)) => {
            dir_span = Some(node.span());
            dir_path = path.clone();
            if let Some(dir) = yaml::string(node, &path, report) {
                out.dir = base.join(dir);
            }
        }
        None => {
            dir_span = Some(map.span());
            dir_path = map.path.key("dir");
        }
    }
    if !out.dir.is_dir() {
        report.error(
            &dir_path,
            dir_span,
            format!("{} is not a folder", out.dir.display()),
        );
    }
    if let Some((node, path)) = map.get("interval")
        && let Some(interval) = yaml::duration(node, &path, report)
    {
        if interval < MIN_PLUGIN_INTERVAL {
            report.error(
                &path,
                Some(node.span()),
                format!("{interval:?} is below the minimum of {MIN_PLUGIN_INTERVAL:?}"),
            );
        } else {
            out.interval = interval;
        }
    }
    if let Some((node, path)) = map.get("timeout")
        && let Some(timeout) = yaml::duration(node, &path, report)
    {
        if timeout < MIN_PLUGIN_TIMEOUT {
            report.error(
                &path,
                Some(node.span()),
                format!("{timeout:?} is below the minimum of {MIN_PLUGIN_TIMEOUT:?}"),
            );
        } else {
            out.timeout = timeout;
        }
    }
    if let Some((node, path)) = map.get("memoryLimit")
        && let Some(limit) = yaml::size(node, &path, report)
    {
        if !(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY).contains(&limit) {
            report.error(&path, Some(node.span()), "must be between 2MiB and 4GiB");
        } else {
            out.memory_limit = limit;
        }
    }
    if let Some((node, path)) = map.get("settings")
        && let Some(settings) = yaml::mapping(node, path.clone(), report)
    {
        for (name, value) in settings.entries() {
            let plugin_path = path.key(name.as_str());
            if !is_plugin_name(name.as_str()) {
                report.error(
                    &plugin_path,
                    Some(name.span()),
                    "not a plugin name (letters, digits, `_`, `-`, `.`)",
                );
                continue;
            }
            if yaml::is_null(value) {
                out.settings
                    .insert(name.as_str().to_string(), BTreeMap::new());
            } else if let Some(values) = yaml::string_map(value, &plugin_path, report) {
                out.settings.insert(name.as_str().to_string(), values);
            }
        }
    }
    if let Some((node, path)) = map.get("cacheDir")
        && let Some(dir) = yaml::string(node, &path, report)
    {
        out.cache_dir = Some(base.join(dir));
    }
    map.finish(report, Unknown::Error);
    Some(out)
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
