//! The agent's Prometheus metrics (`ygg_agent_*`). Every actor holds a clone
//! of [`Metrics`] and bumps its own figures; the admin server renders them.
//! Metrics are atomics, the one piece of state shared without messages.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub const OK: ResultLabel = ResultLabel { result: "ok" };
pub const ERROR: ResultLabel = ResultLabel { result: "error" };

/// The results `plugin_loads_total` counts.
pub const PLUGIN_LOAD_RESULTS: [&str; 4] = ["ok", "error", "untrusted", "compile_failed"];

/// A health check: its instance's service and the check
/// (`tcp 127.0.0.1:8080`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CheckLabel {
    pub service: String,
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginResultLabel {
    pub plugin: String,
    pub result: &'static str,
}

/// Cheap to clone; all clones update the same figures.
#[derive(Clone)]
pub struct Metrics {
    pub registrations: Family<ResultLabel, Counter>,
    pub deregistrations: Family<ResultLabel, Counter>,
    pub keepalives: Family<ResultLabel, Counter>,
    pub lease_grants: Counter,
    pub lease_losses: Counter,
    pub repairs: Counter,
    pub instances_desired: Gauge,
    pub instances_registered: Gauge,
    pub etcd_connected: Gauge,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub plugin_calls: Family<PluginResultLabel, Counter>,
    pub plugin_call_seconds: Family<PluginLabel, Histogram>,
    pub plugin_restarts: Family<PluginLabel, Counter>,
    pub plugins_loaded: Gauge,
    /// Plugin loads by result: `ok`, `error` (not a usable plugin),
    /// `untrusted` (refused by its signature), `compile_failed` (the
    /// compile child crashed, was killed or ran out of its limits).
    pub plugin_loads: Family<ResultLabel, Counter>,
    /// 1 while the plugins folder is refused (another user could write it).
    pub plugins_folder_refused: Gauge,
    /// 1 passing, 0 critical.
    pub check_status: Family<CheckLabel, Gauge>,
    pub check_seconds: Family<CheckLabel, Histogram>,
    pub instances_withheld: Gauge,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registrations = Family::<ResultLabel, Counter>::default();
        let deregistrations = Family::<ResultLabel, Counter>::default();
        let keepalives = Family::<ResultLabel, Counter>::default();
        let lease_grants = Counter::default();
        let lease_losses = Counter::default();
        let repairs = Counter::default();
        let instances_desired = Gauge::default();
        let instances_registered = Gauge::default();
        let etcd_connected = Gauge::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let plugin_calls = Family::<PluginResultLabel, Counter>::default();
        let plugin_call_seconds =
            Family::<PluginLabel, Histogram>::new_with_constructor(plugin_latency_histogram);
        let plugin_restarts = Family::<PluginLabel, Counter>::default();
        let plugins_loaded = Gauge::default();
        let plugin_loads = Family::<ResultLabel, Counter>::default();
        for result in PLUGIN_LOAD_RESULTS {
            let _ = plugin_loads.get_or_create(&ResultLabel { result });
        }
        let plugins_folder_refused = Gauge::default();
        let check_status = Family::<CheckLabel, Gauge>::default();
        let check_seconds =
            Family::<CheckLabel, Histogram>::new_with_constructor(check_latency_histogram);
        let instances_withheld = Gauge::default();

        // Zero-valued series exist from the start, so dashboards and alerts
        // see `0` rather than "no data" before the first event.
        for label in [OK, ERROR] {
            let _ = registrations.get_or_create(&label);
            let _ = deregistrations.get_or_create(&label);
            let _ = keepalives.get_or_create(&label);
            let _ = config_reloads.get_or_create(&label);
        }

        let mut registry = Registry::with_prefix("ygg_agent");
        registry.register(
            "registrations",
            "Instance keys written to etcd, by result",
            registrations.clone(),
        );
        registry.register(
            "deregistrations",
            "Instance keys deleted from etcd, by result",
            deregistrations.clone(),
        );
        registry.register(
            "keepalives",
            "Lease keepalive rounds, by result",
            keepalives.clone(),
        );
        registry.register("lease_grants", "Leases granted", lease_grants.clone());
        registry.register(
            "lease_losses",
            "Leases lost (expired, revoked or not found) and replaced",
            lease_losses.clone(),
        );
        registry.register(
            "repairs",
            "Instance keys put back after someone else deleted or changed them",
            repairs.clone(),
        );
        registry.register(
            "instances_desired",
            "Instances the agent should keep registered",
            instances_desired.clone(),
        );
        registry.register(
            "instances_registered",
            "Instances confirmed registered in etcd under a live lease",
            instances_registered.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the last etcd request succeeded, else 0",
            etcd_connected.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result",
            config_reloads.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin calls, by plugin and result",
            Listed(plugin_calls.clone()),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Wall-clock time of plugin calls",
            Listed(plugin_call_seconds.clone()),
        );
        registry.register(
            "plugin_restarts",
            "Plugin instances rebuilt after a failure",
            Listed(plugin_restarts.clone()),
        );
        registry.register(
            "check_status",
            "Health check status: 1 passing, 0 critical",
            Listed(check_status.clone()),
        );
        registry.register(
            "check_duration_seconds",
            "Wall-clock time of health check runs",
            Listed(check_seconds.clone()),
        );
        registry.register(
            "instances_withheld",
            "Instances held out of etcd because a health check is critical",
            instances_withheld.clone(),
        );
        registry.register(
            "plugins_loaded",
            "Plugins currently loaded",
            plugins_loaded.clone(),
        );
        registry.register(
            "plugin_loads",
            "Plugin loads, by result (ok, error, untrusted, compile_failed)",
            plugin_loads.clone(),
        );
        registry.register(
            "plugins_folder_refused",
            "1 while the plugins folder is refused because another user could write it",
            plugins_folder_refused.clone(),
        );
        registry.register(
            "listener_connections_closed",
            "Connections a listener (admin, api_socket, api_tcp) closed before serving them, by reason (user_share, full, probation, evicted)",
            crate::bounded::closed_connections().clone(),
        );
        Metrics {
            registrations,
            deregistrations,
            keepalives,
            lease_grants,
            lease_losses,
            repairs,
            instances_desired,
            instances_registered,
            etcd_connected,
            config_reloads,
            plugin_calls,
            plugin_call_seconds,
            plugin_restarts,
            plugins_loaded,
            plugin_loads,
            plugins_folder_refused,
            check_status,
            check_seconds,
            instances_withheld,
            registry: Arc::new(registry),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A family whose `# HELP` and `# TYPE` lines are written even while it has
/// no series. prometheus-client leaves an empty family out entirely, so the
/// plugin families (whose series appear on a plugin's first call and go on
/// unload) would vanish from `/metrics`, and dashboards and alerts could not
/// tell "no plugin called yet" from "this agent has no such metric".
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

fn check_latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s: a local connect takes microseconds, a timeout seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e-4, 4.0, 9,
    ))
}

fn plugin_latency_histogram() -> Histogram {
    // 5 µs .. ~2.6 s: warm calls take microseconds, timeouts take the budget.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        5e-6, 4.0, 10,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_prometheus_text() {
        let metrics = Metrics::new();
        metrics.registrations.get_or_create(&OK).inc_by(3);
        metrics.lease_losses.inc();
        let text = metrics.render();
        assert!(
            text.contains("ygg_agent_registrations_total{result=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ygg_agent_registrations_total{result=\"error\"} 0"),
            "{text}"
        );
        assert!(text.contains("ygg_agent_lease_losses_total 1"), "{text}");
        assert!(
            text.contains("# TYPE ygg_agent_etcd_connected gauge"),
            "{text}"
        );
    }

    /// Prometheus text parsed as a checker would: family name → (type,
    /// sample lines). Panics on anything that is not valid exposition:
    /// a sample outside a declared family, a TYPE without HELP before it,
    /// a family declared twice, a value that is not a number.
    fn families(text: &str) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        let mut families = std::collections::BTreeMap::new();
        let mut current: Option<String> = None;
        let mut helped: Option<String> = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let (name, _) = help.split_once(' ').expect("HELP name text");
                helped = Some(name.to_string());
            } else if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("TYPE name type");
                assert_eq!(helped.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type: {line}"
                );
                let previous = families.insert(name.to_string(), (kind.to_string(), Vec::new()));
                assert!(previous.is_none(), "{name} declared twice");
                current = Some(name.to_string());
            } else {
                assert!(!line.starts_with('#'), "unknown comment: {line}");
                let family = current.as_ref().expect("a sample before any TYPE");
                let (kind, samples) = families.get_mut(family).unwrap();
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let name = series.split('{').next().unwrap();
                let suffixes: &[&str] = if kind == "histogram" {
                    &["_bucket", "_sum", "_count"]
                } else {
                    &[""]
                };
                assert!(
                    suffixes.iter().any(|s| name == format!("{family}{s}")),
                    "{name} outside its family {family}"
                );
                value.parse::<f64>().expect("a number");
                samples.push(line.to_string());
            }
        }
        families
    }

    #[test]
    fn plugin_families_are_declared_before_any_plugin_and_after_unload() {
        let metrics = Metrics::new();
        let expected = [
            ("ygg_agent_plugin_calls_total", "counter"),
            ("ygg_agent_plugin_call_duration_seconds", "histogram"),
            ("ygg_agent_plugin_restarts_total", "counter"),
        ];
        let fresh = families(&metrics.render());
        for (name, kind) in expected {
            let (declared, samples) = fresh.get(name).unwrap_or_else(|| panic!("{name} absent"));
            assert_eq!(declared, kind);
            assert!(samples.is_empty(), "{samples:?}");
        }
        // A plugin's series appear with its first call...
        let plugin = PluginLabel {
            plugin: "load".into(),
        };
        let ok = PluginResultLabel {
            plugin: "load".into(),
            result: "ok",
        };
        metrics.plugin_calls.get_or_create(&ok).inc();
        metrics
            .plugin_call_seconds
            .get_or_create(&plugin)
            .observe(0.001);
        metrics.plugin_restarts.get_or_create(&plugin).inc();
        let used = families(&metrics.render());
        assert_eq!(
            used["ygg_agent_plugin_calls_total"].1,
            vec![r#"ygg_agent_plugin_calls_total{plugin="load",result="ok"} 1"#]
        );
        assert_eq!(used["ygg_agent_plugin_call_duration_seconds"].1.len(), 13);
        // ...and go with its unload, leaving the declarations.
        metrics.plugin_calls.remove(&ok);
        metrics.plugin_call_seconds.remove(&plugin);
        metrics.plugin_restarts.remove(&plugin);
        assert_eq!(families(&metrics.render()), fresh);
    }
}
