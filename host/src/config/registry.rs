//! `yggdrasil`: how to reach etcd and how to hold the keys, read from
//! Yggdrasil's v2 layout (`yggdrasil.registry.config`) or its v3 one
//! (`yggdrasil.discovery.registry`, naming a client of `yggdrasil.etcd.clients`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::field::Field;
use super::rules::readable_file;
use super::secret::Secret;
use super::yaml::{List, Section, Unknown, Value};

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

pub(super) fn read_yggdrasil(mut ygg: Section, base: &Path) -> RegistryConfig {
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

#[cfg(test)]
mod tests;
