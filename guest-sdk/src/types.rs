//! Plain Rust versions of the WIT types, so plugins never see the bindings.

use std::collections::BTreeMap;
use std::collections::btree_map;

use crate::bindings;
use crate::bindings::ygg::agent_plugin::host as wit_host;

/// A plugin's output for one instance: key → value.
///
/// Sorted, so output is deterministic. See the crate README for the rules on
/// keys and values.
pub type Metadata = BTreeMap<String, String>;

/// The instance a plugin is asked about, as configured in the agent (plugin
/// output is not included).
///
/// `#[non_exhaustive]`: later versions of the contract may add fields. In
/// tests, build one from [`Instance::default`] and set the fields you need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instance {
    /// Namespace (`default` when not configured).
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service version.
    pub version: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Campus.
    pub campus: String,
    /// The configured metadata.
    pub metadata: BTreeMap<String, String>,
    /// How to reach the instance.
    pub endpoints: Vec<Endpoint>,
    /// The etcd key the instance is registered under.
    pub key: String,
}

/// One way to reach an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Scheme, e.g. `grpc` or `http`.
    pub scheme: String,
    /// Address, e.g. `10.0.0.5:8080`.
    pub address: String,
    /// The endpoint's configured metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    pub(crate) fn from_wit(i: bindings::Instance) -> Self {
        Instance {
            namespace: i.namespace,
            name: i.name,
            version: i.version,
            region: i.region,
            zone: i.zone,
            campus: i.campus,
            metadata: i.metadata.into_iter().collect(),
            endpoints: i
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    scheme: e.scheme,
                    address: e.address,
                    metadata: e.metadata.into_iter().collect(),
                })
                .collect(),
            key: i.key,
        }
    }
}

/// A plugin's settings: `agent.plugins.settings.<plugin name>` in the agent's
/// config, all values as strings.
///
/// Build one with `collect()` or `from_iter` to test a plugin natively:
///
/// ```
/// use ygg_agent_sdk::Settings;
///
/// let settings: Settings = [("format", "unix")].into_iter().collect();
/// assert_eq!(settings.get("format"), Some("unix"));
/// assert_eq!(settings.get_or("missing", "fallback"), "fallback");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// Every setting, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.into_iter()
    }

    /// How many settings there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no settings.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Later pairs win when a key repeats (the agent never sends repeats: its
/// settings come from a YAML map).
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Settings {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Settings(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Same as [`Settings::iter`], for `for (key, value) in &settings`.
impl<'a> IntoIterator for &'a Settings {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        btree_map::Iter<'a, String, String>,
        fn((&'a String, &'a String)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Facts about the machine, read by the agent once per collection round and
/// shared by every plugin. See [`system`](crate::system()).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SystemSnapshot {
    /// Load average over 1 minute.
    pub load1: f64,
    /// Load average over 5 minutes.
    pub load5: f64,
    /// Load average over 15 minutes.
    pub load15: f64,
    /// Total memory, in bytes.
    pub memory_total_bytes: u64,
    /// Memory available to new work, in bytes.
    pub memory_available_bytes: u64,
    /// The machine's hostname.
    pub hostname: String,
    /// Seconds since boot.
    pub uptime_seconds: u64,
    /// Number of CPUs.
    pub cpu_count: u32,
}

impl SystemSnapshot {
    pub(crate) fn from_wit(s: wit_host::SystemSnapshot) -> Self {
        SystemSnapshot {
            load1: s.load1,
            load5: s.load5,
            load15: s.load15,
            memory_total_bytes: s.memory_total_bytes,
            memory_available_bytes: s.memory_available_bytes,
            hostname: s.hostname,
            uptime_seconds: s.uptime_seconds,
            cpu_count: s.cpu_count,
        }
    }
}

/// Severity of a line sent to the agent's log with [`log`](crate::log()).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected the plugin works around.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    pub(crate) fn to_wit(self) -> wit_host::Level {
        match self {
            Level::Trace => wit_host::Level::Trace,
            Level::Debug => wit_host::Level::Debug,
            Level::Info => wit_host::Level::Info,
            Level::Warn => wit_host::Level::Warn,
            Level::Error => wit_host::Level::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_get_and_get_or() {
        let s: Settings = [("format", "unix"), ("empty", "")].into_iter().collect();
        assert_eq!(s.get("format"), Some("unix"));
        assert_eq!(s.get("empty"), Some(""));
        assert_eq!(s.get("missing"), None);
        assert_eq!(s.get_or("format", "rfc3339"), "unix");
        assert_eq!(s.get_or("empty", "x"), "", "an empty value is still set");
        assert_eq!(s.get_or("missing", "rfc3339"), "rfc3339");
        assert_eq!(s.len(), 2);
        assert!(!s.is_empty());
        assert!(Settings::default().is_empty());
    }

    #[test]
    fn settings_iterate_sorted_and_last_repeat_wins() {
        let s: Settings = vec![
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "3".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")]);
        let mut keys = Vec::new();
        for (key, _) in &s {
            keys.push(key);
        }
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn instance_from_wit_keeps_every_field() {
        let wit = bindings::Instance {
            namespace: "ns".into(),
            name: "svc".into(),
            version: "1.0.0".into(),
            region: "r".into(),
            zone: "z".into(),
            campus: "c".into(),
            metadata: vec![("env".into(), "dev".into())],
            endpoints: vec![bindings::ygg::agent_plugin::types::Endpoint {
                scheme: "grpc".into(),
                address: "127.0.0.1:1".into(),
                metadata: vec![("w".into(), "1".into())],
            }],
            key: "/k".into(),
        };
        let i = Instance::from_wit(wit);
        assert_eq!(
            (i.namespace.as_str(), i.name.as_str(), i.version.as_str()),
            ("ns", "svc", "1.0.0")
        );
        assert_eq!(
            (i.region.as_str(), i.zone.as_str(), i.campus.as_str()),
            ("r", "z", "c")
        );
        assert_eq!(i.metadata.get("env").map(String::as_str), Some("dev"));
        assert_eq!(i.endpoints.len(), 1);
        assert_eq!(i.endpoints[0].scheme, "grpc");
        assert_eq!(i.endpoints[0].address, "127.0.0.1:1");
        assert_eq!(
            i.endpoints[0].metadata.get("w").map(String::as_str),
            Some("1")
        );
        assert_eq!(i.key, "/k");
    }
}
