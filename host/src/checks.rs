//! Health checks: the probes and the tasks that run them beside the
//! supervisor.
//!
//! Contract:
//! - The supervisor owns one [`CheckHost`] (made by [`CheckHost::new`] with
//!   its `TaskTracker`) and holds the `Receiver<CheckReport>` it returns;
//!   the host keeps the `Sender` and gives a clone to each check's task.
//!   The channel is bounded ([`REPORTS_CAPACITY`]): a supervisor that falls
//!   behind slows the checks, never the other way round.
//! - [`CheckHost::set`] takes every check the config defines, by
//!   [`CheckId`] (the instance's registry key and the check's position;
//!   [`from_config`] builds that map).
//!   An identical (id, config) keeps running with its state and schedule;
//!   a removed or changed one stops (a changed one starts again from its
//!   `initial_status`). `set` never awaits.
//! - Each check is one task on the tracker: its first run at a uniformly
//!   random point of its first interval (a thousand checks never fire at
//!   once), then one run every `interval`. At most [`MAX_PROBES_IN_FLIGHT`]
//!   probes run at a time; each is bounded by its `timeout` (connect, TLS,
//!   request and body alike) and by size limits, so a hostile server costs
//!   one check its deadline and nothing else.
//! - After a run that changed the check's status the task sends a
//!   [`CheckReport`] (every run, in the schedule's tests). The supervisor
//!   passes each to [`CheckHost::record`], which drops reports from a check
//!   since removed or changed, then asks [`CheckHost::withheld`] (or the
//!   pure [`withheld`]) which instances are out of the target. Every run
//!   updates the check's metric series ([`CheckHost::set_with_series`]) and
//!   its newest result ([`CheckHost::latest`]) without waking anyone.
//! - Dropping the host, or a check through `set`, stops its task (and the
//!   probe in flight) at its next await.

mod grpc;
mod http;
mod tcp;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, CheckConfig, CheckStatus, Probe};
use crate::plugins::{CheckPlugins, CheckTarget, PluginInstance};
use crate::record::Instance;
use grpc::GrpcProbe;
use http::HttpProbe;
use tcp::Stage;
use tls::TlsRoots;

/// Probes running at once, across every check (the rest wait their turn).
pub const MAX_PROBES_IN_FLIGHT: usize = 64;
/// Reports queued for the supervisor before the checks wait for it.
pub const REPORTS_CAPACITY: usize = 256;
/// The shortest period a check runs at (a guard: the config asks more).
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// First runs are spread over the interval in steps of this: checks that
/// fall in one step run together, so a thousand checks a second wake the
/// agent at most 100 times a second instead of a thousand (each wake-up
/// costs the kernel more than a loopback connect does).
const SPREAD_STEP: Duration = Duration::from_millis(10);

/// Where in its first `interval` a check first runs, for a uniform `draw`
/// in [0, 1): a whole number of [`SPREAD_STEP`]s (any point, for an
/// interval that is not a multiple of the step).
fn spread(interval: Duration, draw: f64) -> Duration {
    let steps = (interval.as_nanos() / SPREAD_STEP.as_nanos()) as u32;
    if steps == 0 || !interval.as_nanos().is_multiple_of(SPREAD_STEP.as_nanos()) {
        return interval.mul_f64(draw);
    }
    SPREAD_STEP * ((f64::from(steps) * draw) as u32).min(steps - 1)
}

/// One check: the registry key of its instance and its position in that
/// instance's `checks`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckId {
    pub instance_key: String,
    pub index: usize,
}

/// The outcome of one run of a check, sent by its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub id: CheckId,
    /// The check's status after this run.
    pub status: CheckStatus,
    /// This run: the probe's short output, or why it failed.
    pub last: Result<String, String>,
    /// How long the probe took (not counting the wait for a slot).
    pub duration: Duration,
    /// Consecutive runs, this one included, with this run's outcome
    /// (passes if `last` is `Ok`, failures if `Err`).
    pub consecutive: u32,
    /// This run changed `status`.
    pub changed: bool,
    /// Which start of the check sent it; `record` drops older ones.
    generation: u64,
}

/// A check as the host knows it (for `status` and metrics).
#[derive(Debug, Clone, Copy)]
pub struct CheckView<'a> {
    pub id: &'a CheckId,
    pub config: &'a CheckConfig,
    /// The last report's status, or `initial_status` before the first.
    pub status: CheckStatus,
    pub last: Option<&'a CheckReport>,
}

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
}

impl Prober {
    pub fn new(tracker: TaskTracker, plugins: watch::Receiver<CheckPlugins>) -> Prober {
        Prober {
            roots: TlsRoots::new(tracker.clone()),
            tracker,
            plugins,
        }
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
                    found.check(&instance, &targets, settings).await
                }
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {timeout:?} {stage}")),
        }
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

/// A probe for log lines and `status`: `tcp 127.0.0.1:5432`,
/// `http GET https://…/healthz`, `grpc 127.0.0.1:50051 service "db"`.
/// Headers are left out (they may hold credentials).
pub fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Tcp { address } => format!("tcp {address}"),
        Probe::Http { url, method, .. } => format!("http {method} {url}"),
        Probe::Grpc {
            address,
            service,
            tls,
        } => {
            let scheme = if *tls { "grpc+tls" } else { "grpc" };
            if service.is_empty() {
                format!("{scheme} {address}")
            } else {
                format!("{scheme} {address} service {service:?}")
            }
        }
        // Settings are left out, as headers are.
        Probe::Plugin {
            plugin, targets, ..
        } => format!("plugin {plugin} {}", targets.join(",")),
    }
}

/// Every check `agent` defines, by id: `agent.checks[i]` belongs to
/// `agent.instances[i]`, whose key `key` gives (the registry key, as in
/// the target). The map to give [`CheckHost::set`].
pub fn from_config(
    agent: &AgentConfig,
    key: impl Fn(&Instance) -> String,
) -> BTreeMap<CheckId, CheckConfig> {
    let mut checks = BTreeMap::new();
    for (instance, configs) in agent.instances.iter().zip(&agent.checks) {
        let instance_key = key(instance);
        for (index, config) in configs.iter().enumerate() {
            let id = CheckId {
                instance_key: instance_key.clone(),
                index,
            };
            checks.insert(id, config.clone());
        }
    }
    checks
}

/// The instance keys with at least one critical check.
pub fn withheld<'a>(
    statuses: impl IntoIterator<Item = (&'a CheckId, CheckStatus)>,
) -> BTreeSet<String> {
    statuses
        .into_iter()
        .filter(|(_, status)| *status == CheckStatus::Critical)
        .map(|(id, _)| id.instance_key.clone())
        .collect()
}

/// Runs a probe of the check with this id (the id's instance key is what a
/// check plugin is told).
type ProbeFn = Arc<
    dyn Fn(&CheckId, Probe, Duration) -> BoxFuture<'static, Result<String, String>> + Send + Sync,
>;

/// The running checks. Owned by the supervisor; see the module's contract.
pub struct CheckHost {
    tracker: TaskTracker,
    probe: ProbeFn,
    slots: Arc<Semaphore>,
    reports: mpsc::Sender<CheckReport>,
    checks: BTreeMap<CheckId, Running>,
    next_generation: u64,
    /// Where check tasks run; `None`: the caller's runtime.
    runtime: Option<OwnRuntime>,
    reporting: Reporting,
}

impl Running {
    fn view<'a>(&'a self, id: &'a CheckId) -> CheckView<'a> {
        CheckView {
            id,
            config: &self.config,
            status: self.status,
            last: self.last.as_ref(),
        }
    }
}

impl Drop for CheckHost {
    fn drop(&mut self) {
        // Stop every task before the runtime they run on goes.
        self.checks.clear();
    }
}

/// A current-thread runtime on a thread of its own, for the check tasks.
/// Dropping it ends the thread, and with it every task still there.
struct OwnRuntime {
    handle: tokio::runtime::Handle,
    _stop: DropGuard,
}

impl OwnRuntime {
    fn start() -> std::io::Result<OwnRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("ygg-checks")
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("ygg-checks".into())
            .spawn(move || {
                runtime.block_on(stopped.cancelled());
                // Tasks still there are dropped, not waited for.
                runtime.shutdown_background();
            })?;
        Ok(OwnRuntime {
            handle,
            _stop: stop.drop_guard(),
        })
    }
}

struct Running {
    config: CheckConfig,
    generation: u64,
    status: CheckStatus,
    last: Option<CheckReport>,
    /// The task's newest run, reported or not.
    latest: watch::Receiver<Option<CheckReport>>,
    /// Dropping it stops the task.
    _stop: DropGuard,
}

impl CheckHost {
    /// A host with no checks, and the receiving end of its reports (for
    /// the supervisor's event loop).
    ///
    /// The checks run on a runtime of their own, one thread: a thousand
    /// checks a second then wake that one thread rather than handing work
    /// back and forth between the agent's workers (measured: most of the
    /// CPU that many checks cost was those hand-overs). If that thread
    /// cannot start, they run on the caller's runtime.
    ///
    /// `plugins` are the loaded check plugins (the plugin host's
    /// [`crate::plugins::Outbox::check_plugins`]), read at each run of a
    /// check of kind `plugin`: such a call runs on the checks' thread like
    /// any probe, its CPU time yielded every epoch tick.
    pub fn new(
        tracker: TaskTracker,
        plugins: watch::Receiver<CheckPlugins>,
    ) -> (CheckHost, mpsc::Receiver<CheckReport>) {
        let prober = Prober::new(tracker.clone(), plugins);
        let probe: ProbeFn = Arc::new(move |id, probe, timeout| {
            let prober = prober.clone();
            let key = id.instance_key.clone();
            Box::pin(async move { prober.probe_for(&key, &probe, timeout).await })
        });
        let (mut host, reports) = CheckHost::with_probe(tracker, probe, MAX_PROBES_IN_FLIGHT);
        host.reporting = Reporting::Changes;
        match OwnRuntime::start() {
            Ok(runtime) => host.runtime = Some(runtime),
            Err(error) => {
                tracing::warn!(%error, "cannot start the health checks' thread; they run on the agent's runtime")
            }
        }
        (host, reports)
    }

    fn with_probe(
        tracker: TaskTracker,
        probe: ProbeFn,
        slots: usize,
    ) -> (CheckHost, mpsc::Receiver<CheckReport>) {
        let (reports, receiver) = mpsc::channel(REPORTS_CAPACITY);
        let host = CheckHost {
            tracker,
            probe,
            slots: Arc::new(Semaphore::new(slots)),
            reports,
            checks: BTreeMap::new(),
            next_generation: 0,
            runtime: None,
            reporting: Reporting::EveryRun,
        };
        (host, receiver)
    }

    /// Makes the running checks exactly `checks` (see the contract).
    /// Afterwards a changed or new check has its `initial_status` and no
    /// last report, so [`CheckHost::withheld`] may change here too.
    pub fn set(&mut self, checks: BTreeMap<CheckId, CheckConfig>) {
        self.set_with_series(checks, |_, _| None);
    }

    /// [`CheckHost::set`], with each new check's metric series (which its
    /// task updates after every run) from `series`.
    pub fn set_with_series(
        &mut self,
        checks: BTreeMap<CheckId, CheckConfig>,
        series: impl Fn(&CheckId, &CheckConfig) -> Option<CheckSeries>,
    ) {
        self.checks
            .retain(|id, running| checks.get(id) == Some(&running.config));
        for (id, config) in checks {
            if !self.checks.contains_key(&id) {
                let series = series(&id, &config);
                let running = self.start(id.clone(), config, series);
                self.checks.insert(id, running);
            }
        }
    }

    fn start(&mut self, id: CheckId, config: CheckConfig, series: Option<CheckSeries>) -> Running {
        let generation = self.next_generation;
        self.next_generation += 1;
        let stop = CancellationToken::new();
        let interval = config.interval.max(MIN_INTERVAL);
        let first = spread(interval, rand::rng().random::<f64>());
        if let Some(series) = &series {
            series
                .status
                .set(i64::from(config.initial_status == CheckStatus::Passing));
        }
        let (latest_tx, latest) = watch::channel(None);
        let task = CheckTask {
            id,
            config: config.clone(),
            generation,
            probe: self.probe.clone(),
            slots: self.slots.clone(),
            reports: self.reports.clone(),
            reporting: self.reporting,
            latest: latest_tx,
            series,
        };
        let stopped = stop.clone();
        let run = async move {
            tokio::select! {
                _ = stopped.cancelled() => {}
                _ = task.run(first, interval) => {}
            }
        };
        match &self.runtime {
            Some(runtime) => self.tracker.spawn_on(run, &runtime.handle),
            None => self.tracker.spawn(run),
        };
        Running {
            status: config.initial_status,
            config,
            generation,
            last: None,
            latest,
            _stop: stop.drop_guard(),
        }
    }

    /// Takes a report from the channel into the host's view. `false`: the
    /// check was removed or changed since it ran; ignore the report.
    pub fn record(&mut self, report: CheckReport) -> bool {
        match self.checks.get_mut(&report.id) {
            Some(running) if running.generation == report.generation => {
                running.status = report.status;
                running.last = Some(report);
                true
            }
            _ => false,
        }
    }

    /// A check's newest run, whether or not its report was sent.
    pub fn latest(&self, id: &CheckId) -> Option<CheckReport> {
        self.checks
            .get(id)
            .and_then(|running| running.latest.borrow().clone())
    }

    /// The last recorded report of a check.
    pub fn last(&self, id: &CheckId) -> Option<&CheckReport> {
        self.checks
            .get(id)
            .and_then(|running| running.last.as_ref())
    }

    /// One check, if it runs.
    pub fn get(&self, id: &CheckId) -> Option<CheckView<'_>> {
        self.checks
            .get_key_value(id)
            .map(|(id, running)| running.view(id))
    }

    /// Every check, in id order.
    pub fn iter(&self) -> impl Iterator<Item = CheckView<'_>> {
        self.checks.iter().map(|(id, running)| running.view(id))
    }

    /// The instance keys with at least one critical check.
    pub fn withheld(&self) -> BTreeSet<String> {
        withheld(self.checks.iter().map(|(id, running)| (id, running.status)))
    }
}

/// What a check's task owns.
struct CheckTask {
    id: CheckId,
    config: CheckConfig,
    generation: u64,
    probe: ProbeFn,
    slots: Arc<Semaphore>,
    reports: mpsc::Sender<CheckReport>,
    reporting: Reporting,
    latest: watch::Sender<Option<CheckReport>>,
    series: Option<CheckSeries>,
}

/// Which runs a check's task sends to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporting {
    /// Only runs that change the check's status (the agent: a thousand
    /// steady checks a second then never wake the supervisor; each run
    /// still updates the check's metric series and its newest result).
    Changes,
    /// Every run (tests of the schedule watch the runs this way).
    EveryRun,
}

/// A check's metric series, updated by its task after every run.
#[derive(Debug, Clone)]
pub struct CheckSeries {
    /// 1 passing, 0 critical.
    pub status: prometheus_client::metrics::gauge::Gauge,
    pub seconds: prometheus_client::metrics::histogram::Histogram,
}

impl CheckTask {
    /// Runs until the supervisor stops reading reports (or the task is
    /// stopped from outside).
    async fn run(self, first: Duration, interval: Duration) {
        let mut threshold = Threshold::new(self.config.initial_status);
        let mut ticks = tokio::time::interval_at(Instant::now() + first, interval);
        // A run delayed (waiting for a slot) shifts the later ones: no burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Ok(slot) = self.slots.acquire().await else {
                return;
            };
            let began = Instant::now();
            let last = (self.probe)(&self.id, self.config.probe.clone(), self.config.timeout).await;
            let duration = began.elapsed();
            drop(slot);
            let changed = threshold.record(last.is_ok(), &self.config);
            let report = CheckReport {
                id: self.id.clone(),
                status: threshold.status,
                last,
                duration,
                consecutive: threshold.consecutive(),
                changed,
                generation: self.generation,
            };
            if let Some(series) = &self.series {
                series
                    .status
                    .set(i64::from(report.status == CheckStatus::Passing));
                series.seconds.observe(duration.as_secs_f64());
            }
            let send = changed || self.reporting == Reporting::EveryRun;
            if send {
                self.latest.send_replace(Some(report.clone()));
                if self.reports.send(report).await.is_err() {
                    return;
                }
            } else {
                self.latest.send_replace(Some(report));
            }
        }
    }
}

/// A check's status and its current run of equal outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Threshold {
    status: CheckStatus,
    passes: u32,
    failures: u32,
}

impl Threshold {
    fn new(initial: CheckStatus) -> Threshold {
        Threshold {
            status: initial,
            passes: 0,
            failures: 0,
        }
    }

    /// Counts one outcome; `true` if it changed the status.
    fn record(&mut self, passed: bool, config: &CheckConfig) -> bool {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if self.status == CheckStatus::Critical && self.passes >= config.success_before_passing
            {
                self.status = CheckStatus::Passing;
                return true;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.status == CheckStatus::Passing
                && self.failures >= config.failures_before_critical
            {
                self.status = CheckStatus::Critical;
                return true;
            }
        }
        false
    }

    fn consecutive(&self) -> u32 {
        self.passes.max(self.failures)
    }
}

/// No check plugins (tests of the built-in probes).
#[cfg(test)]
fn no_plugins() -> watch::Receiver<CheckPlugins> {
    watch::channel(CheckPlugins::default()).1
}

#[cfg(test)]
impl Prober {
    /// A prober trusting `roots` instead of the system's.
    fn with_roots(tracker: TaskTracker, roots: rustls::RootCertStore) -> Prober {
        Prober {
            roots: TlsRoots::preloaded(tracker.clone(), roots),
            tracker,
            plugins: no_plugins(),
        }
    }
}

#[cfg(test)]
mod tests;
