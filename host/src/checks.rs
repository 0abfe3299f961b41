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
//!   [`CheckId`] (the instance's registry key and the check's position).
//!   An identical (id, config) keeps running with its state and schedule;
//!   a removed or changed one stops (a changed one starts again from its
//!   `initial_status`). `set` never awaits.
//! - Each check is one task on the tracker: its first run at a uniformly
//!   random point of its first interval (a thousand checks never fire at
//!   once), then one run every `interval`. At most [`MAX_PROBES_IN_FLIGHT`]
//!   probes run at a time; each is bounded by its `timeout` (connect, TLS,
//!   request and body alike) and by size limits, so a hostile server costs
//!   one check its deadline and nothing else.
//! - After every run the task sends a [`CheckReport`]. The supervisor passes
//!   each to [`CheckHost::record`], which drops reports from a check since
//!   removed or changed, then asks [`CheckHost::withheld`] (or the pure
//!   [`withheld`]) which instances are out of the target.
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
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{CheckConfig, CheckStatus, Probe};
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
}

impl Prober {
    pub fn new(tracker: TaskTracker) -> Prober {
        Prober {
            roots: TlsRoots::new(tracker.clone()),
            tracker,
        }
    }

    /// `Ok(short output)` on a pass (`connected to 127.0.0.1:80`,
    /// `HTTP 200: ok`, `SERVING`), `Err(reason)` otherwise
    /// (`connection refused`, `timed out after 2s waiting for the answer`,
    /// `redirect (302) not followed`, `NOT_SERVING`).
    pub async fn probe(&self, probe: &Probe, timeout: Duration) -> Result<String, String> {
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
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {timeout:?} {stage}")),
        }
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
    }
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

type ProbeFn =
    Arc<dyn Fn(Probe, Duration) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The running checks. Owned by the supervisor; see the module's contract.
pub struct CheckHost {
    tracker: TaskTracker,
    probe: ProbeFn,
    slots: Arc<Semaphore>,
    reports: mpsc::Sender<CheckReport>,
    checks: BTreeMap<CheckId, Running>,
    next_generation: u64,
}

struct Running {
    config: CheckConfig,
    generation: u64,
    status: CheckStatus,
    last: Option<CheckReport>,
    /// Dropping it stops the task.
    _stop: DropGuard,
}

impl CheckHost {
    /// A host with no checks, and the receiving end of its reports (for
    /// the supervisor's event loop).
    pub fn new(tracker: TaskTracker) -> (CheckHost, mpsc::Receiver<CheckReport>) {
        let prober = Prober::new(tracker.clone());
        let probe: ProbeFn = Arc::new(move |probe, timeout| {
            let prober = prober.clone();
            Box::pin(async move { prober.probe(&probe, timeout).await })
        });
        CheckHost::with_probe(tracker, probe, MAX_PROBES_IN_FLIGHT)
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
        };
        (host, receiver)
    }

    /// Makes the running checks exactly `checks` (see the contract).
    /// Afterwards a changed or new check has its `initial_status` and no
    /// last report, so [`CheckHost::withheld`] may change here too.
    pub fn set(&mut self, checks: BTreeMap<CheckId, CheckConfig>) {
        self.checks
            .retain(|id, running| checks.get(id) == Some(&running.config));
        for (id, config) in checks {
            if !self.checks.contains_key(&id) {
                let running = self.start(id.clone(), config);
                self.checks.insert(id, running);
            }
        }
    }

    fn start(&mut self, id: CheckId, config: CheckConfig) -> Running {
        let generation = self.next_generation;
        self.next_generation += 1;
        let stop = CancellationToken::new();
        let interval = config.interval.max(MIN_INTERVAL);
        let first = interval.mul_f64(rand::rng().random::<f64>());
        let task = CheckTask {
            id,
            config: config.clone(),
            generation,
            probe: self.probe.clone(),
            slots: self.slots.clone(),
            reports: self.reports.clone(),
        };
        let stopped = stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stopped.cancelled() => {}
                _ = task.run(first, interval) => {}
            }
        });
        Running {
            status: config.initial_status,
            config,
            generation,
            last: None,
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

    /// The last recorded report of a check.
    pub fn last(&self, id: &CheckId) -> Option<&CheckReport> {
        self.checks
            .get(id)
            .and_then(|running| running.last.as_ref())
    }

    /// Every check, in id order.
    pub fn iter(&self) -> impl Iterator<Item = CheckView<'_>> {
        self.checks.iter().map(|(id, running)| CheckView {
            id,
            config: &running.config,
            status: running.status,
            last: running.last.as_ref(),
        })
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
            let last = (self.probe)(self.config.probe.clone(), self.config.timeout).await;
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
            if self.reports.send(report).await.is_err() {
                return;
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
