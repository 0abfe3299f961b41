//! `Prober`: one probe (tcp, http, grpc or a check plugin) under one
//! deadline, its outcome's control characters escaped; check plugin calls
//! on a thread of their own.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::grpc::{self, GrpcProbe};
use super::http::{self, HttpProbe};
use super::tcp::{self, Stage};
use super::tls::TlsRoots;
use crate::config::Probe;
use crate::plugins::{CheckPlugins, CheckTarget, PluginInstance};

/// Runs one probe; a probe never outlives its `timeout`.
///
/// Cheap to clone: clones share the system's TLS roots, read once (on a
/// blocking thread of the tracker) when a check first needs them.
#[derive(Clone)]
pub struct Prober {
    tracker: TaskTracker,
    roots: TlsRoots,
    /// The loaded check plugins, published by the plugin host.
    plugins: watch::Receiver<CheckPlugins>,
    /// Where check plugin calls run; `None`: in the probe's own future.
    plugin_runtime: Option<tokio::runtime::Handle>,
}

impl Prober {
    pub fn new(tracker: TaskTracker, plugins: watch::Receiver<CheckPlugins>) -> Prober {
        Prober {
            roots: TlsRoots::new(tracker.clone()),
            tracker,
            plugins,
            plugin_runtime: None,
        }
    }

    /// Runs check plugin calls on `runtime` (a thread of their own), so a
    /// plugin spinning through its CPU budget never delays a built-in probe.
    pub fn with_plugin_runtime(mut self, runtime: tokio::runtime::Handle) -> Prober {
        self.plugin_runtime = Some(runtime);
        self
    }

    /// `Ok(short output)` on a pass (`connected to 127.0.0.1:80`,
    /// `HTTP 200: ok`, `SERVING`), `Err(reason)` otherwise
    /// (`connection refused`, `timed out after 2s waiting for the answer`,
    /// `redirect (302) not followed`, `NOT_SERVING`).
    pub async fn probe(&self, probe: &Probe, timeout: Duration) -> Result<String, String> {
        self.probe_for("", probe, timeout).await
    }

    /// [`Prober::probe`] for the instance registered under `key` (what a
    /// check plugin is told).
    pub async fn probe_for(
        &self,
        key: &str,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut stage = Stage::Connecting;
        let run = async {
            match probe {
                Probe::Tcp { address } => tcp::probe(address).await,
                Probe::Http {
                    url,
                    method,
                    headers,
                    tls_skip_verify,
                } => {
                    let check = HttpProbe {
                        url,
                        method,
                        headers,
                        tls_skip_verify: *tls_skip_verify,
                    };
                    http::probe(&check, &self.roots, &mut stage).await
                }
                Probe::Grpc {
                    address,
                    service,
                    tls,
                } => {
                    let check = GrpcProbe {
                        address,
                        service,
                        tls: *tls,
                    };
                    grpc::probe(&check, &self.roots, &self.tracker, deadline, &mut stage).await
                }
                Probe::Plugin {
                    plugin,
                    targets,
                    settings,
                    instance,
                } => {
                    let Some(found) = self.plugins.borrow().get(plugin).cloned() else {
                        return Err(format!(
                            "no check plugin `{plugin}` is loaded (a {plugin}.wasm for the check world of WIT 0.2.0 in agent.plugins.dir)"
                        ));
                    };
                    let targets = resolve(targets).await?;
                    stage = Stage::Waiting;
                    let instance = PluginInstance {
                        key: key.to_string(),
                        instance: (**instance).clone(),
                    };
                    let settings = settings.clone();
                    let call = async move { found.check(&instance, &targets, &settings).await };
                    match &self.plugin_runtime {
                        Some(runtime) => {
                            // Dropped at the probe's deadline: the call ends too.
                            let mut task = AbortOnDrop(self.tracker.spawn_on(call, runtime));
                            match (&mut task.0).await {
                                Ok(outcome) => outcome,
                                Err(_) => Err("the check plugins' thread stopped".to_string()),
                            }
                        }
                        None => call.await,
                    }
                }
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {timeout:?} {stage}")),
        };
        escape_output(outcome)
    }
}

/// A probe's outcome with its control characters escaped: what a checked
/// service or a check plugin says (an output, an error from its socket)
/// is logged and shown by `status`, and a newline in it must not start a
/// log line of its own.
fn escape_output(outcome: Result<String, String>) -> Result<String, String> {
    let clean = |text: String| {
        if text.chars().any(char::is_control) {
            crate::status::escape(&text)
        } else {
            text
        }
    };
    outcome.map(clean).map_err(clean)
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves a plugin check's targets, just before its call: the plugin may
/// connect to what they resolve to now. A target that does not resolve is
/// left out, unless none does.
async fn resolve(targets: &[String]) -> Result<Vec<CheckTarget>, String> {
    let mut resolved = Vec::with_capacity(targets.len());
    let mut first_error = None;
    for address in targets {
        match tokio::net::lookup_host(address.as_str()).await {
            Ok(addresses) => resolved.push(CheckTarget {
                address: address.clone(),
                resolved: addresses.collect(),
            }),
            Err(error) => {
                first_error.get_or_insert_with(|| format!("cannot resolve {address}: {error}"));
            }
        }
    }
    match first_error {
        Some(error) if resolved.is_empty() => Err(error),
        _ => Ok(resolved),
    }
}

/// No check plugins (tests of the built-in probes).
#[cfg(test)]
pub(super) fn no_plugins() -> watch::Receiver<CheckPlugins> {
    watch::channel(CheckPlugins::default()).1
}

#[cfg(test)]
impl Prober {
    /// A prober trusting `roots` instead of the system's.
    pub(super) fn with_roots(tracker: TaskTracker, roots: rustls::RootCertStore) -> Prober {
        Prober {
            roots: TlsRoots::preloaded(tracker.clone(), roots),
            tracker,
            plugins: no_plugins(),
            plugin_runtime: None,
        }
    }
}

#[cfg(test)]
mod escape_tests {
    use super::escape_output;

    #[test]
    fn what_a_service_or_check_plugin_says_cannot_start_a_log_line() {
        let forged = "ok\n2026-12-06T05:00:00Z  INFO ygg_agent: registered key=/x\r\u{1b}[2J";
        let escaped =
            "ok\\u{a}2026-12-06T05:00:00Z  INFO ygg_agent: registered key=/x\\u{d}\\u{1b}[2J";
        assert_eq!(escape_output(Ok(forged.into())), Ok(escaped.into()));
        assert_eq!(escape_output(Err(forged.into())), Err(escaped.into()));
        assert_eq!(escape_output(Ok("HTTP 200".into())), Ok("HTTP 200".into()));
    }
}
