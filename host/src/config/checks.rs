//! Health checks: `agent.checks` (the timing every check starts from) and
//! `agent.instances[].checks`, each probe with its target resolved.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::record::{Endpoint, Instance};

use super::field::Field;
use super::rules::{plugin_name, printable};
use super::yaml::{List, Section, Unknown, Value};

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
pub(super) fn read_check_defaults(mut map: Section) -> CheckTiming {
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
pub(super) fn read_checks(
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
        Probe::Http { method, url, .. } => format!("http {method} {url}"),
        Probe::Grpc { address, .. } => format!("grpc {address}"),
        Probe::Plugin {
            plugin, targets, ..
        } => format!("plugin {plugin} {}", targets.join(",")),
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

#[cfg(test)]
mod tests;
