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
mod probe;
mod tcp;
mod tls;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, CheckConfig, CheckStatus, Probe, redact_url};
use crate::plugins::CheckPlugins;
use crate::record::Instance;
use crate::status::{CHECK_HISTORY, CheckRun};
pub use probe::Prober;
#[cfg(test)]
use probe::no_plugins;

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

/// A probe for log lines, metric labels and `status`: `tcp 127.0.0.1:5432`,
/// `http GET https://…/healthz?<redacted>`, `grpc 127.0.0.1:50051 service "db"`.
/// Headers are left out and a URL's query and user info redacted (they may
/// hold credentials; `/status` is served without authentication).
pub fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Tcp { address } => format!("tcp {address}"),
        Probe::Http { url, method, .. } => format!("http {method} {}", redact_url(url)),
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
    /// The parent of every check task's token (and of the checks' own
    /// runtime): cancelling it stops them all.
    stop: CancellationToken,
    probe: ProbeFn,
    slots: Arc<Semaphore>,
    reports: mpsc::Sender<CheckReport>,
    checks: BTreeMap<CheckId, Running>,
    next_generation: u64,
    /// Where check tasks run; `None`: the caller's runtime.
    runtime: Option<OwnRuntime>,
    /// Where check plugin calls run (one thread for all of them: plugins
    /// spinning through their budgets take at most one core, and never the
    /// checks' thread); `None`: on the checks' thread.
    plugin_runtime: Option<OwnRuntime>,
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
    /// A thread named `name` running until dropped or until `parent` is
    /// cancelled.
    fn start(name: &str, parent: &CancellationToken) -> std::io::Result<OwnRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()?;
        let handle = runtime.handle().clone();
        let stop = parent.child_token();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
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
    /// When `status` last changed (the check's start before that).
    since: SystemTime,
    /// The task's newest run, reported or not.
    latest: watch::Receiver<Option<CheckReport>>,
    /// The task's last [`CHECK_HISTORY`] runs, oldest first.
    history: watch::Receiver<VecDeque<CheckRun>>,
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
    /// check of kind `plugin`: such a call runs on a thread of its own
    /// (`ygg-check-plugins`, shared by every check plugin call), so plugins
    /// spinning through their CPU budgets never delay a built-in probe.
    ///
    /// Cancelling `stop` stops every check task (and both threads): the
    /// shutdown does that, not the drop of the host.
    pub fn new(
        tracker: TaskTracker,
        plugins: watch::Receiver<CheckPlugins>,
        stop: CancellationToken,
    ) -> (CheckHost, mpsc::Receiver<CheckReport>) {
        let plugin_runtime = match OwnRuntime::start("ygg-check-plugins", &stop) {
            Ok(runtime) => Some(runtime),
            Err(error) => {
                tracing::warn!(%error, "cannot start the check plugins' thread; they run on the health checks' thread");
                None
            }
        };
        let mut prober = Prober::new(tracker.clone(), plugins);
        if let Some(runtime) = &plugin_runtime {
            prober = prober.with_plugin_runtime(runtime.handle.clone());
        }
        let probe: ProbeFn = Arc::new(move |id, probe, timeout| {
            let prober = prober.clone();
            let key = id.instance_key.clone();
            Box::pin(async move { prober.probe_for(&key, &probe, timeout).await })
        });
        let (mut host, reports) = CheckHost::with_probe(tracker, probe, MAX_PROBES_IN_FLIGHT);
        host.reporting = Reporting::Changes;
        host.stop = stop;
        host.plugin_runtime = plugin_runtime;
        match OwnRuntime::start("ygg-checks", &host.stop) {
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
            stop: CancellationToken::new(),
            probe,
            slots: Arc::new(Semaphore::new(slots)),
            reports,
            checks: BTreeMap::new(),
            next_generation: 0,
            runtime: None,
            plugin_runtime: None,
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

    /// [`CheckHost::set_with_series`] for the checks of one instance
    /// (`key`, by position), leaving every other instance's alone.
    pub fn set_instance_with_series(
        &mut self,
        key: &str,
        checks: &[CheckConfig],
        series: impl Fn(&CheckId, &CheckConfig) -> Option<CheckSeries>,
    ) {
        let stale: Vec<CheckId> = self
            .of_instance(key)
            .filter(|view| checks.get(view.id.index) != Some(view.config))
            .map(|view| view.id.clone())
            .collect();
        for id in stale {
            self.checks.remove(&id);
        }
        for (index, config) in checks.iter().enumerate() {
            let id = CheckId {
                instance_key: key.to_string(),
                index,
            };
            if !self.checks.contains_key(&id) {
                let series = series(&id, config);
                let running = self.start(id.clone(), config.clone(), series);
                self.checks.insert(id, running);
            }
        }
    }

    /// The checks of instance `key`, in position order.
    pub fn of_instance(&self, key: &str) -> impl Iterator<Item = CheckView<'_>> {
        let id = |index| CheckId {
            instance_key: key.to_string(),
            index,
        };
        self.checks
            .range(id(0)..=id(usize::MAX))
            .map(|(id, running)| running.view(id))
    }

    fn start(&mut self, id: CheckId, config: CheckConfig, series: Option<CheckSeries>) -> Running {
        let generation = self.next_generation;
        self.next_generation += 1;
        let stop = self.stop.child_token();
        let interval = config.interval.max(MIN_INTERVAL);
        let first = spread(interval, rand::rng().random::<f64>());
        if let Some(series) = &series {
            series
                .status
                .set(i64::from(config.initial_status == CheckStatus::Passing));
        }
        let (latest_tx, latest) = watch::channel(None);
        let (history_tx, history) = watch::channel(VecDeque::new());
        let task = CheckTask {
            id,
            config: config.clone(),
            generation,
            probe: self.probe.clone(),
            slots: self.slots.clone(),
            reports: self.reports.clone(),
            reporting: self.reporting,
            latest: latest_tx,
            history: history_tx,
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
            since: SystemTime::now(),
            latest,
            history,
            _stop: stop.drop_guard(),
        }
    }

    /// Takes a report from the channel into the host's view. `false`: the
    /// check was removed or changed since it ran; ignore the report.
    pub fn record(&mut self, report: CheckReport) -> bool {
        match self.checks.get_mut(&report.id) {
            Some(running) if running.generation == report.generation => {
                if report.changed {
                    running.since = SystemTime::now();
                }
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

    /// A check's last runs, oldest first, and since when it has its
    /// current status (for the status page and `ygg-agent status`).
    pub fn history(&self, id: &CheckId) -> Option<(Vec<CheckRun>, SystemTime)> {
        let running = self.checks.get(id)?;
        let runs = running.history.borrow().iter().cloned().collect();
        Some((runs, running.since))
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
    history: watch::Sender<VecDeque<CheckRun>>,
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
            self.history.send_modify(|runs| {
                if runs.len() == CHECK_HISTORY {
                    runs.pop_front();
                }
                runs.push_back(CheckRun {
                    at_ms: crate::status::unix_ms(SystemTime::now()),
                    passed: report.last.is_ok(),
                    output: match &report.last {
                        Ok(output) | Err(output) => output.clone(),
                    },
                    duration_ms: duration.as_secs_f64() * 1000.0,
                });
            });
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

#[cfg(test)]
mod tests;
