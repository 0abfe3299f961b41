//! The invariants the fuzz targets check, and the on-disk ("canonical") form
//! of each target's inputs.
//!
//! Shared by the fuzz targets (nightly, `fuzz/fuzz_targets/`) and by the
//! stable regression test `tests/integration/fuzz_regressions.rs`, which includes this
//! file with `#[path]`. It may therefore use only std, `ygg_agent` and
//! `serde_json`: no `arbitrary`, no `libfuzzer-sys`.
//!
//! Canonical forms (what `fuzz/regressions/<target>/*` and the seed corpora
//! of the byte-level targets hold):
//! - `config_parse`: the config file's bytes (non-UTF-8 input is skipped).
//! - `config_structured`: the rendered YAML text. A first line
//!   `# fuzz-secret: <token>` names the password used in it, which no
//!   message and no `Debug` output may contain.
//! - `durations`: text; `a|b` also checks that `a` followed by `b` adds up.
//! - `plugin_output`: JSON `[[key, value], ...]`.
//! - `record_json`: JSON `{"prefix": …, "instance": {…}, "merged": {…}}`
//!   (see [`record_case_to_json`]).
//! - `api_body`: the raw bytes of a local API request body (also tried as
//!   an id).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value, json};
use ygg_agent::config::{self, Config, ConfigIssue};
use ygg_agent::plugins::output;
use ygg_agent::record::{self, Endpoint, INSTANCE_ID_KEY, INSTANCE_ID_MAX_LEN, Instance};

/// Every fuzz target, by name (the file in `fuzz/fuzz_targets/`).
pub const TARGETS: &[&str] = &[
    "config_parse",
    "config_structured",
    "durations",
    "plugin_output",
    "record_json",
    "api_body",
];

/// Targets whose fuzz input is already the canonical form, so their seed
/// corpora can be replayed without `arbitrary`.
pub const RAW_TARGETS: &[&str] = &["config_parse", "durations", "api_body"];

/// First line of a `config_structured` input naming its password.
pub const SECRET_LINE: &str = "# fuzz-secret: ";

/// Replays one input in its canonical form through the target's checks.
/// Panics when an invariant does not hold; `Err` for a malformed file.
pub fn replay(target: &str, bytes: &[u8]) -> Result<(), String> {
    match target {
        "config_parse" => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                check_config_text(text, None);
            }
        }
        "config_structured" => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let secret = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix(SECRET_LINE));
            check_config_text(text, secret);
        }
        "durations" => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                check_duration_text(text);
            }
        }
        "plugin_output" => {
            let pairs: Vec<(String, String)> =
                serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            check_plugin_output(pairs);
        }
        "record_json" => {
            let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            let (prefix, instance, merged) = record_case_from_json(&value)?;
            check_record(&prefix, &instance, &merged);
        }
        "api_body" => check_api_body(bytes),
        other => return Err(format!("unknown fuzz target `{other}`")),
    }
    Ok(())
}

/// A broken invariant that is a known, reported finding: `YGG_FUZZ_KNOWN`
/// (comma-separated ids) lets a fuzz run look past it for new ones. The
/// stable regression test never sets it, so a known finding still fails
/// there until it is fixed.
fn finding(id: &str, holds: bool, message: impl FnOnce() -> String) {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    if holds {
        return;
    }
    let known = KNOWN.get_or_init(|| {
        std::env::var("YGG_FUZZ_KNOWN")
            .unwrap_or_default()
            .split(',')
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .collect()
    });
    if !known.iter().any(|k| k == id) {
        panic!("[{id}] {}", message());
    }
}

// ---------------------------------------------------------------- config

/// A fixed base folder for relative paths in fuzzed configs, holding what
/// the generators refer to: `plugins/`, `ca.pem`, `cert.pem`, `key.pem`.
pub fn fuzz_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join("ygg-agent-fuzz-base");
        std::fs::create_dir_all(base.join("plugins")).expect("create the fuzz base folder");
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            let path = base.join(file);
            if !path.is_file() {
                std::fs::write(&path, "not really a certificate\n").expect("write a fuzz file");
            }
        }
        std::path::absolute(&base).expect("absolute fuzz base")
    })
}

/// `config::parse` never panics, is deterministic, and what it accepts
/// satisfies every rule the validator claims to enforce.
pub fn check_config_text(text: &str, secret: Option<&str>) {
    let base = fuzz_base();
    let first = config::parse(text, base);
    let second = config::parse(text, base);
    // The last line a marker can be on. At the end of a text that does not
    // end with a line break, yaml-rust2 (like libyaml) moves the end-of-stream
    // marker to a virtual next line ("force new line" in fetch_stream_end).
    let last_line = text.matches(['\n', '\r']).count()
        + 1
        + usize::from(!text.is_empty() && !text.ends_with(['\n', '\r']));
    let issues: Vec<&ConfigIssue> = match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.config, b.config, "parse is not deterministic");
            assert_eq!(a.warnings, b.warnings, "warnings are not deterministic");
            check_config(&a.config);
            a.warnings.iter().collect()
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "errors are not deterministic");
            assert!(!a.is_empty(), "an invalid config must name a problem");
            a.iter().collect()
        }
        _ => panic!("parse is not deterministic: {first:?} then {second:?}"),
    };
    for issue in &issues {
        assert!(!issue.path.is_empty(), "issue without a path: {issue:?}");
        assert!(
            !issue.message.is_empty(),
            "issue without a message: {issue:?}"
        );
        if let Some(line) = issue.line {
            assert!(
                (1..=last_line).contains(&line),
                "line {line} is outside the file (last line {last_line}): {issue:?}"
            );
        }
    }
    // Only when the password appears nowhere else (the fuzzer learns the
    // token and may use it as, say, a metadata key, which may be shown): in
    // the `# fuzz-secret` line and the password's value.
    if let Some(secret) = secret.filter(|s| !s.is_empty() && text.matches(*s).count() == 2) {
        for issue in &issues {
            let shown = issue.to_string();
            assert!(
                !shown.contains(secret),
                "an issue shows the password: {shown}"
            );
        }
        if let Ok(loaded) = &first {
            let shown = format!("{:?}", loaded.config);
            assert!(!shown.contains(secret), "Debug shows the password: {shown}");
        }
    }
}

fn assert_segment(what: &str, value: &str) {
    assert!(
        !value.is_empty() && value.len() <= config::MAX_NAME_LEN,
        "{what} {value:?} has a bad length"
    );
    assert!(
        !value.contains('/') && value != "." && value != "..",
        "{what} {value:?} is not one key segment"
    );
    assert!(
        !value.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{what} {value:?} contains white space"
    );
}

fn assert_etcd_endpoint(endpoint: &str) {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("etcd endpoint {endpoint:?} has no port"));
    assert!(!host.is_empty(), "etcd endpoint {endpoint:?} has no host");
    // Like the prefix, names and addresses: the endpoint becomes a URI, and
    // a URI cannot hold white space or control characters.
    finding(
        "etcd-endpoint-whitespace",
        !endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control()),
        || format!("etcd endpoint {endpoint:?} has white space or control characters"),
    );
    assert!(
        port.parse::<u16>().is_ok_and(|p| p > 0),
        "etcd endpoint {endpoint:?} has a bad port"
    );
}

/// The rules a validated [`Config`] must satisfy.
pub fn check_config(config: &Config) {
    let registry = &config.registry;
    let prefix = registry.prefix.as_str();
    assert!(
        prefix.starts_with('/'),
        "prefix {prefix:?} must start with /"
    );
    // Used as written, like Yggdrasil's Go registry: trailing `/`s stay.
    assert!(
        !(prefix.trim_end_matches('/').split('/').skip(1)).any(str::is_empty),
        "prefix {prefix:?} has an empty segment"
    );
    assert!(
        !prefix.chars().any(|c| c.is_whitespace() || c.is_control()),
        "prefix {prefix:?} has white space"
    );
    assert!(registry.ttl >= config::MIN_TTL, "ttl {:?}", registry.ttl);
    assert_eq!(registry.ttl.subsec_nanos(), 0, "ttl {:?}", registry.ttl);
    assert!(registry.retry_interval >= config::MIN_RETRY_INTERVAL);
    let client = &registry.client;
    assert!(!client.dial_timeout.is_zero());
    assert!(!client.endpoints.is_empty(), "no etcd endpoint");
    for endpoint in &client.endpoints {
        assert_etcd_endpoint(endpoint);
        match &client.tls {
            Some(_) => assert!(!endpoint.starts_with("http://"), "{endpoint} with TLS"),
            None => assert!(!endpoint.starts_with("https://"), "{endpoint} without TLS"),
        }
    }
    if let Some(credentials) = &client.credentials {
        assert!(
            !credentials.username.is_empty(),
            "credentials without a user"
        );
    }
    if let Some(tls) = &client.tls {
        let mut files = vec![&tls.ca_file];
        if let Some((cert, key)) = &tls.identity {
            files.extend([cert, key]);
        }
        for file in files {
            assert!(file.is_absolute(), "TLS path {file:?} is relative");
            assert!(file.is_file(), "TLS path {file:?} is not a file");
        }
    }

    let agent = &config.agent;
    assert!(!agent.shutdown_timeout.is_zero());
    if let Some(plugins) = &agent.plugins {
        assert!(plugins.dir.is_absolute(), "plugins dir {:?}", plugins.dir);
        assert!(plugins.dir.is_dir(), "plugins dir {:?}", plugins.dir);
        assert!(plugins.interval >= config::MIN_PLUGIN_INTERVAL);
        assert!(plugins.timeout >= config::MIN_PLUGIN_TIMEOUT);
        assert!(
            (config::MIN_PLUGIN_MEMORY..=config::MAX_PLUGIN_MEMORY).contains(&plugins.memory_limit),
            "memory limit {}",
            plugins.memory_limit
        );
        for name in plugins.settings.keys() {
            assert!(config::is_plugin_name(name), "plugin name {name:?}");
        }
        if let Some(dir) = &plugins.cache_dir {
            assert!(dir.is_absolute(), "cache dir {dir:?}");
        }
    }
    let mut keys = HashSet::new();
    for instance in &agent.instances {
        check_instance(instance);
        let key = record::registry_key(prefix, instance);
        assert!(
            keys.insert(key.clone()),
            "two instances share the key {key}"
        );
        check_record(prefix, instance, &instance.metadata);
    }
}

/// The rules a validated [`Instance`] must satisfy.
pub fn check_instance(instance: &Instance) {
    assert_segment("namespace", &instance.namespace);
    assert_segment("name", &instance.name);
    for (what, value) in [
        ("version", &instance.version),
        ("region", &instance.region),
        ("zone", &instance.zone),
        ("campus", &instance.campus),
    ] {
        assert!(
            !value.chars().any(char::is_control),
            "{what} {value:?} has control characters"
        );
    }
    if let Some(id) = instance.metadata.get(INSTANCE_ID_KEY) {
        assert!(
            (1..=INSTANCE_ID_MAX_LEN).contains(&id.len()),
            "instance_id {id:?} has a bad length"
        );
        assert!(
            !id.contains('/') && !id.chars().any(|c| c.is_whitespace() || c.is_control()),
            "instance_id {id:?} is not one key segment"
        );
    }
    for key in instance.metadata.keys() {
        assert!(!key.is_empty(), "empty metadata key");
    }
    assert!(!instance.endpoints.is_empty(), "instance without endpoints");
    let mut seen = HashSet::new();
    for endpoint in &instance.endpoints {
        let scheme = &endpoint.scheme;
        assert!(
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)),
            "scheme {scheme:?}"
        );
        let address = &endpoint.address;
        assert!(
            !address.is_empty() && !address.chars().any(|c| c.is_whitespace() || c.is_control()),
            "address {address:?}"
        );
        assert!(seen.insert((scheme, address)), "{endpoint} is listed twice");
    }
}

// ---------------------------------------------------------------- durations

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Below this many nanoseconds an f64 holds every integer exactly.
const F64_EXACT_NANOS: u128 = 1 << 53;

/// `parse_duration` and `parse_size` never panic, and what they return is
/// consistent: within a year, the `Debug` form reads back, whitespace does
/// not matter, a plain `<integer><unit>` means exactly that, and `a` then
/// `b` add up (input `a|b`).
pub fn check_duration_text(text: &str) {
    check_duration(text);
    check_size(text);
    if let Some((a, b)) = text.split_once('|') {
        check_duration_sum(a, b);
    }
}

fn check_duration(text: &str) {
    let result = config::parse_duration(text);
    let padded = config::parse_duration(&format!(" {text}\t"));
    assert_eq!(
        result.as_ref().ok(),
        padded.as_ref().ok(),
        "surrounding white space changes {text:?}"
    );
    let d = match result {
        Ok(d) => d,
        Err(message) => {
            assert!(!message.is_empty());
            if let Some(exact) = integer_duration(text) {
                assert!(
                    exact > YEAR.as_nanos(),
                    "{text:?} ({exact} ns) was refused: {message}"
                );
            }
            return;
        }
    };
    assert!(d <= YEAR, "{text:?} gave {d:?}, more than a year");
    let shown = format!("{d:?}");
    let again = config::parse_duration(&shown)
        .unwrap_or_else(|e| panic!("{text:?} gave {d:?}, whose Debug form does not parse: {e}"));
    let exact_enough = d.subsec_nanos() == 0 || d < Duration::from_secs(1_000_000);
    let tolerance = if exact_enough {
        Duration::ZERO
    } else {
        Duration::from_nanos(4)
    };
    assert!(
        again.abs_diff(d) <= tolerance,
        "{text:?} gave {d:?}, whose Debug form {shown:?} reads back as {again:?}"
    );
    if let Some(exact) = integer_duration(text)
        && exact < F64_EXACT_NANOS
    {
        assert_eq!(d.as_nanos(), exact, "{text:?} is exactly {exact} ns");
    }
}

/// `<digits><unit>` (optionally `+`-signed) in nanoseconds, computed exactly;
/// `None` for any other shape.
fn integer_duration(text: &str) -> Option<u128> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(digits_end);
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    if digits.is_empty() {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Some(u128::MAX);
    }
    let value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    Some(value.saturating_mul(unit_nanos))
}

fn check_duration_sum(a: &str, b: &str) {
    let (Ok(da), Ok(db)) = (config::parse_duration(a), config::parse_duration(b)) else {
        return;
    };
    let joinable = a.trim() == a
        && b.trim() == b
        && a != "0"
        && b != "0"
        && a.ends_with(|c: char| c.is_alphabetic())
        && b.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !joinable {
        return;
    }
    let joined = format!("{a}{b}");
    let sum = da + db;
    // Up to 2^42 ns (73 min) f64 sums of even a thousand terms stay well
    // within a nanosecond of exact.
    if sum.as_nanos() >= 1 << 42 {
        return;
    }
    let together = config::parse_duration(&joined)
        .unwrap_or_else(|e| panic!("{a:?} and {b:?} parse but {joined:?} does not: {e}"));
    assert!(
        together.abs_diff(sum) <= Duration::from_nanos(2),
        "{a:?} = {da:?} and {b:?} = {db:?} but {joined:?} = {together:?}"
    );
}

fn check_size(text: &str) {
    let result = config::parse_size(text);
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let multiplier: Option<u128> = match unit.trim() {
        "" | "B" => Some(1),
        "KiB" | "Ki" => Some(1 << 10),
        "MiB" | "Mi" => Some(1 << 20),
        "GiB" | "Gi" => Some(1 << 30),
        "KB" | "kB" | "K" | "k" => Some(1_000),
        "MB" | "M" => Some(1_000_000),
        "GB" | "G" => Some(1_000_000_000),
        _ => None,
    };
    let significant = digits.trim_start_matches('0');
    let expected: Option<u64> = match multiplier {
        Some(m) if !digits.is_empty() && significant.len() <= 20 => {
            let value: u128 = significant.parse().unwrap_or(0);
            u64::try_from(value * m).ok()
        }
        _ => None,
    };
    assert_eq!(
        result.as_ref().ok().copied(),
        expected,
        "parse_size({text:?}) = {result:?}"
    );
    if let Ok(n) = result {
        assert_eq!(config::parse_size(&n.to_string()), Ok(n));
    }
}

// ---------------------------------------------------------------- plugin output

/// `output::validate` accepts exactly the outputs that follow every rule,
/// returns them unchanged, and keeps its error message short.
pub fn check_plugin_output(pairs: Vec<(String, String)>) {
    let mut problems = Vec::new();
    if pairs.len() > output::MAX_KEYS {
        problems.push("too many keys".to_string());
    }
    let mut seen = HashSet::new();
    for (key, value) in &pairs {
        if key.is_empty() || key.len() > output::MAX_KEY_LEN {
            problems.push(format!("key length {}", key.len()));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        {
            problems.push(format!("key {key:?} has a bad character"));
        }
        if key == INSTANCE_ID_KEY {
            problems.push("instance_id".to_string());
        }
        if value.len() > output::MAX_VALUE_BYTES {
            problems.push(format!("value of {} bytes", value.len()));
        }
        if !seen.insert(key) {
            problems.push(format!("key {key:?} twice"));
        }
    }
    match output::validate(pairs.clone()) {
        Ok(map) => {
            assert!(problems.is_empty(), "accepted despite {problems:?}");
            assert_eq!(map.len(), pairs.len());
            for (key, value) in &pairs {
                assert_eq!(map.get(key), Some(value), "{key:?} changed");
            }
        }
        Err(message) => {
            assert!(!problems.is_empty(), "refused a good output: {message}");
            assert!(message.starts_with("invalid output: "), "{message}");
            // It goes into logs and the admin API: a bounded summary.
            finding("output-error-length", message.len() < 1000, || {
                format!(
                    "the error message is {} bytes ({} chars), not < 1000: {message}",
                    message.len(),
                    message.chars().count()
                )
            });
        }
    }
}

// ---------------------------------------------------------------- records

/// `record_value` is compact JSON holding exactly the instance's fields in
/// the seed's order; `identity_json` and `instance_key` ignore endpoint
/// order, location and metadata other than `instance_id`.
pub fn check_record(prefix: &str, instance: &Instance, merged: &BTreeMap<String, String>) {
    let text = record::record_value(instance, merged);
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("record_value is not JSON ({e}): {text}"));
    assert_eq!(
        go_escaped(&serde_json::to_string(&value).unwrap()),
        text,
        "record_value is not compact, ordered JSON with Go's escaping"
    );
    let object = value.as_object().expect("the record is an object");
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        [
            "namespace",
            "name",
            "version",
            "region",
            "zone",
            "campus",
            "metadata",
            "endpoints"
        ]
    );
    for (field, expected) in [
        ("namespace", &instance.namespace),
        ("name", &instance.name),
        ("version", &instance.version),
        ("region", &instance.region),
        ("zone", &instance.zone),
        ("campus", &instance.campus),
    ] {
        assert_eq!(object[field].as_str(), Some(expected.as_str()), "{field}");
    }
    assert_json_map(&object["metadata"], merged, "metadata");
    let endpoints = object["endpoints"].as_array().expect("endpoints array");
    assert_eq!(endpoints.len(), instance.endpoints.len());
    for (json, endpoint) in endpoints.iter().zip(&instance.endpoints) {
        let json = json.as_object().expect("endpoint object");
        assert_eq!(
            json.keys().collect::<Vec<_>>(),
            ["scheme", "address", "metadata"]
        );
        assert_eq!(json["scheme"].as_str(), Some(endpoint.scheme.as_str()));
        assert_eq!(json["address"].as_str(), Some(endpoint.address.as_str()));
        assert_json_map(&json["metadata"], &endpoint.metadata, "endpoint metadata");
    }

    let identity = record::identity_json(instance);
    let parsed: Value = serde_json::from_str(&identity)
        .unwrap_or_else(|e| panic!("identity_json is not JSON ({e}): {identity}"));
    let mut sorted: Vec<(&str, &str)> = instance
        .endpoints
        .iter()
        .map(|e| (e.scheme.as_str(), e.address.as_str()))
        .collect();
    sorted.sort();
    let expected = json!({
        "namespace": instance.namespace,
        "name": instance.name,
        "version": instance.version,
        "endpoints": sorted
            .iter()
            .map(|(scheme, address)| json!({"scheme": scheme, "address": address}))
            .collect::<Vec<_>>(),
    });
    assert_eq!(parsed, expected, "identity_json");
    assert_eq!(
        go_escaped(&serde_json::to_string(&expected).unwrap()),
        identity,
        "identity_json is not compact JSON with Go's escaping"
    );

    let key = record::instance_key(instance);
    match instance.metadata.get(INSTANCE_ID_KEY) {
        Some(id) => assert_eq!(&key, id),
        None => assert!(
            key.len() == 40 && key.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "instance key {key:?} is not 40 lowercase hex digits"
        ),
    }
    // The same instance seen differently: endpoints in another order, other
    // location, metadata and endpoint metadata.
    let mut other = instance.clone();
    other.endpoints.reverse();
    if !other.endpoints.is_empty() {
        other.endpoints.rotate_left(1);
    }
    for endpoint in &mut other.endpoints {
        endpoint.metadata.insert("fuzz".into(), "x".into());
    }
    other.region.push('x');
    other.zone.clear();
    other.campus = "elsewhere".into();
    other.metadata.retain(|k, _| k == INSTANCE_ID_KEY);
    other.metadata.insert("fuzz-extra".into(), "x".into());
    assert_eq!(record::identity_json(&other), identity);
    assert_eq!(record::instance_key(&other), key);
    assert_eq!(
        record::registry_key(prefix, instance),
        format!("{prefix}/{}/{}/{key}", instance.namespace, instance.name)
    );
}

/// What Go's `encoding/json` writes for compact JSON `serde_json` wrote: the
/// same text with `&`, `<`, `>` as `\u0026`, `\u003c`, `\u003e` and U+2028,
/// U+2029 as `\u2028`, `\u2029` (none of them can occur outside a string).
/// Both already spell `"`, `\` and control characters alike (`\b \f \n \r
/// \t`, else `\u00xx` in lowercase hex), and write 0x7f raw.
fn go_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '&' => out.push_str("\\u0026"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn assert_json_map(json: &Value, expected: &BTreeMap<String, String>, what: &str) {
    if expected.is_empty() {
        assert!(json.is_null(), "empty {what} must be null, is {json}");
        return;
    }
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("{what} is {json}"));
    assert!(
        object.keys().eq(expected.keys()),
        "{what} keys are not the sorted keys"
    );
    for (key, value) in expected {
        assert_eq!(object[key].as_str(), Some(value.as_str()), "{what}.{key}");
    }
}

fn map_to_json(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The canonical form of a `record_json` input.
pub fn record_case_to_json(
    prefix: &str,
    instance: &Instance,
    merged: &BTreeMap<String, String>,
) -> Value {
    json!({
        "prefix": prefix,
        "instance": {
            "namespace": instance.namespace,
            "name": instance.name,
            "version": instance.version,
            "region": instance.region,
            "zone": instance.zone,
            "campus": instance.campus,
            "metadata": map_to_json(&instance.metadata),
            "endpoints": instance.endpoints.iter().map(|e| json!({
                "scheme": e.scheme,
                "address": e.address,
                "metadata": map_to_json(&e.metadata),
            })).collect::<Vec<_>>(),
        },
        "merged": map_to_json(merged),
    })
}

/// Reads what [`record_case_to_json`] wrote.
pub fn record_case_from_json(
    value: &Value,
) -> Result<(String, Instance, BTreeMap<String, String>), String> {
    fn text(object: &Map<String, Value>, key: &str) -> Result<String, String> {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("`{key}` is not a string"))
    }
    fn map(object: &Map<String, Value>, key: &str) -> Result<BTreeMap<String, String>, String> {
        let Some(Value::Object(entries)) = object.get(key) else {
            return Err(format!("`{key}` is not an object"));
        };
        entries
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_string()))
                    .ok_or_else(|| format!("`{key}.{k}` is not a string"))
            })
            .collect()
    }
    let top = value.as_object().ok_or("not an object")?;
    let instance = top
        .get("instance")
        .and_then(Value::as_object)
        .ok_or("`instance` is not an object")?;
    let endpoints = instance
        .get("endpoints")
        .and_then(Value::as_array)
        .ok_or("`endpoints` is not a list")?
        .iter()
        .map(|e| {
            let e = e.as_object().ok_or("an endpoint is not an object")?;
            Ok(Endpoint {
                scheme: text(e, "scheme")?,
                address: text(e, "address")?,
                metadata: map(e, "metadata")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let instance = Instance {
        namespace: text(instance, "namespace")?,
        name: text(instance, "name")?,
        version: text(instance, "version")?,
        region: text(instance, "region")?,
        zone: text(instance, "zone")?,
        campus: text(instance, "campus")?,
        metadata: map(instance, "metadata")?,
        endpoints,
    };
    Ok((text(top, "prefix")?, instance, map(top, "merged")?))
}

/// The local API's request parsing (`api::body`) on any bytes: never
/// panics, is deterministic, refuses more than 64 KiB, names a problem
/// when it refuses; an accepted registration obeys the instance rules and
/// reads back the same from its own JSON; an accepted reason is short and
/// printable; an id is accepted exactly when it matches
/// `[A-Za-z0-9._-]{1,128}` and is not `.` or `..`.
pub fn check_api_body(bytes: &[u8]) {
    use ygg_agent::api::body;
    let defaults = config::CheckTiming::default();
    let first = body::registration(bytes, &defaults);
    let second = body::registration(bytes, &defaults);
    assert_eq!(first, second, "registration parsing is not deterministic");
    if bytes.len() > body::MAX_BODY {
        assert!(first.is_err(), "a body over the limit was accepted");
    }
    match &first {
        Err(problems) => {
            assert!(!problems.is_empty(), "a refusal must name a problem");
            assert!(
                problems.iter().all(|p| !p.is_empty()),
                "empty problem: {problems:?}"
            );
        }
        Ok(read) => {
            let instance = &read.instance;
            assert!(!instance.name.is_empty() && !instance.namespace.is_empty());
            assert!(!instance.endpoints.is_empty(), "accepted without endpoints");
            for text in [&instance.namespace, &instance.name] {
                assert!(
                    !text.contains('/') && !text.chars().any(char::is_control),
                    "a key segment holds `/` or a control character: {text:?}"
                );
            }
            if let Some(ttl) = read.ttl {
                assert!(ttl >= config::MIN_API_TTL, "ttl {ttl:?} below the minimum");
            }
            if read.checks.is_empty() {
                let endpoints: Vec<Value> = instance
                    .endpoints
                    .iter()
                    .map(|e| json!({"scheme": e.scheme, "address": e.address, "metadata": e.metadata}))
                    .collect();
                let mut again = json!({
                    "namespace": instance.namespace, "name": instance.name,
                    "version": instance.version, "region": instance.region,
                    "zone": instance.zone, "campus": instance.campus,
                    "metadata": instance.metadata, "endpoints": endpoints,
                });
                if let Some(ttl) = read.ttl {
                    again["ttl"] = json!(format!("{ttl:?}"));
                }
                let reread = body::registration(again.to_string().as_bytes(), &defaults);
                assert_eq!(
                    reread.as_ref().ok(),
                    Some(read),
                    "does not read back from {again}"
                );
            }
        }
    }
    match body::reason(bytes) {
        Ok(reason) => {
            assert!(reason.chars().count() <= body::MAX_REASON);
            assert!(
                !reason.chars().any(char::is_control),
                "control characters in {reason:?}"
            );
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let safe = (1..=body::MAX_ID).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && text != "."
            && text != "..";
        assert_eq!(body::check_id(text).is_ok(), safe, "id {text:?}");
    }
}
