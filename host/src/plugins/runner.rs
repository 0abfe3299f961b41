//! One task per plugin owns its wasmtime `Store`; collection rounds arrive
//! over a channel and results go back to the supervisor. The task enforces
//! the limits (CPU by epoch budget, wall clock by timeout, memory by a
//! limiter), and after any trap, timeout or limit hit it drops the Store
//! and builds a fresh one from the pre-instance, with exponential backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};
use wasmtime::{Store, UpdateDeadline};

use super::engine::PluginEngine;
use super::instance::PluginInstance;
use super::state::PluginState;
use super::system::SystemSnapshot;
use super::ticker::EPOCH_TICK;
use super::{output, v0_1_0};
use crate::backoff::Backoff;
use crate::metrics::{Metrics, PluginLabel, PluginResultLabel};

/// First delay before rebuilding a failed plugin; it doubles up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Linear memory never shrinks: a long-lived instance is rebuilt after this
/// many calls, or once it has grown past half its memory limit.
const RECYCLE_AFTER_CALLS: u64 = 10_000;

/// Limits from `agent.plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
}

impl Limits {
    /// The configured limits, or the defaults without a `plugins` section.
    pub fn of(config: Option<&crate::config::PluginsConfig>) -> Limits {
        Limits {
            timeout: config.map_or(crate::config::DEFAULT_PLUGIN_TIMEOUT, |c| c.timeout),
            memory: config.map_or(crate::config::DEFAULT_PLUGIN_MEMORY, |c| c.memory_limit),
        }
    }
}

/// What a plugin says about itself, from `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub suggested_interval: Option<Duration>,
}

impl From<v0_1_0::PluginInfo> for PluginInfo {
    fn from(info: v0_1_0::PluginInfo) -> Self {
        PluginInfo {
            name: info.name,
            version: info.version,
            suggested_interval: info.suggested_interval_ms.map(Duration::from_millis),
        }
    }
}

/// Everything needed to build (and rebuild) a plugin instance.
pub struct Spec {
    pub name: Arc<str>,
    pub pre: v0_1_0::PluginPre<PluginState>,
    pub settings: Vec<(String, String)>,
    pub limits: Limits,
}

/// Why a call did not produce an output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// A trap: panic, CPU budget, memory limit. The Store is discarded.
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past `timeout` (e.g. blocked in a host call). The Store is discarded.
    #[error("ran past the {0:?} timeout (a loop, or blocked in a host call)")]
    Timeout(Duration),
    /// The plugin returned an error; it stays loaded.
    #[error("returned an error: {0}")]
    Failed(String),
    /// The output broke the rules; the plugin stays loaded.
    #[error("{0}")]
    Invalid(String),
    /// Not called: the plugin is being rebuilt after failures.
    #[error("not called: rebuilding after failures, next attempt in {0:?}")]
    Backoff(Duration),
}

impl CallError {
    /// The Store can no longer be trusted after this error.
    fn poisons(&self) -> bool {
        matches!(self, CallError::Trap(_) | CallError::Timeout(_))
    }
}

/// A live instance of a plugin.
pub struct Live {
    store: Store<PluginState>,
    bindings: v0_1_0::Plugin,
    calls: u64,
}

/// Before every call: a fresh CPU budget, counted in epoch ticks. The epoch
/// callback yields to the runtime every tick (so the wall-clock timeout can
/// fire) and traps once the budget is spent.
pub(super) fn arm(store: &mut Store<PluginState>, budget: Duration) {
    let ticks = (budget.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64;
    store.data_mut().cpu_ticks_left = ticks;
    store.data_mut().lines.store(0, Ordering::Relaxed);
    store.set_epoch_deadline(1);
}

/// Runs one call under the limits; maps every way it can fail.
pub(super) async fn guarded<T>(
    budget: Duration,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(budget + EPOCH_TICK * 2, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(trap)) => Err(CallError::Trap(describe_trap(&trap))),
        Err(_) => Err(CallError::Timeout(budget)),
    }
}

/// The most useful line of a trap: the root cause (our own limit messages,
/// or wasmtime's trap code), without the wasm backtrace.
fn describe_trap(error: &wasmtime::Error) -> String {
    let root = error.root_cause().to_string();
    let line = root.lines().next().unwrap_or_default();
    if line.contains("unreachable") {
        // A Rust panic ends in `unreachable`; the SDK's panic hook has
        // already logged the panic message itself.
        format!("{line} (a panic: see the plugin's error line above)")
    } else {
        line.to_string()
    }
}

/// A store under the limits: the memory limiter, and the epoch callback
/// that spends the call's CPU budget.
pub(super) fn new_store(engine: &PluginEngine, state: PluginState) -> Store<PluginState> {
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| &mut state.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if state.cpu_ticks_left == 0 {
            wasmtime::bail!("CPU budget exhausted (agent.plugins.timeout)");
        }
        state.cpu_ticks_left -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// Instantiates, asks `describe`, then `init` with the settings.
pub async fn instantiate(
    engine: &PluginEngine,
    spec: &Spec,
    system: Arc<SystemSnapshot>,
) -> Result<(Live, v0_1_0::PluginInfo), CallError> {
    let state = PluginState::new(
        spec.name.clone(),
        spec.settings.clone(),
        spec.limits.memory,
        system,
        engine.ticker().clone(),
    );
    let mut store = new_store(engine, state);
    let budget = spec.limits.timeout;
    let _ticking = engine.ticker().busy();
    arm(&mut store, budget);
    let bindings = guarded(budget, spec.pre.instantiate_async(&mut store)).await?;
    arm(&mut store, budget);
    let info = guarded(budget, bindings.call_describe(&mut store)).await?;
    arm(&mut store, budget);
    guarded(budget, bindings.call_init(&mut store, &spec.settings))
        .await?
        .map_err(CallError::Failed)?;
    Ok((
        Live {
            store,
            bindings,
            calls: 0,
        },
        info,
    ))
}

impl Live {
    async fn collect(
        &mut self,
        instance: &PluginInstance,
        budget: Duration,
    ) -> Result<BTreeMap<String, String>, CallError> {
        self.calls += 1;
        let _ticking = self.store.data().ticker.busy();
        arm(&mut self.store, budget);
        let input = v0_1_0::to_wit_instance(instance);
        let output = guarded(budget, self.bindings.call_collect(&mut self.store, &input)).await?;
        let pairs = output.map_err(CallError::Failed)?;
        output::validate(pairs).map_err(CallError::Invalid)
    }

    /// The most linear memory this instance has had, in bytes.
    pub fn memory_peak(&self) -> u64 {
        self.store.data().limiter.peak as u64
    }

    fn worn_out(&self, memory_limit: u64) -> bool {
        self.calls >= RECYCLE_AFTER_CALLS || wears_out(self.memory_peak(), memory_limit)
    }
}

/// An instance whose linear memory grew past half its limit is rebuilt
/// after the round.
pub fn wears_out(memory_peak: u64, memory_limit: u64) -> bool {
    memory_peak > memory_limit / 2
}

/// One call outside a runner task (for `ygg-agent plugin check`).
pub async fn collect_once(
    live: &mut Live,
    instance: &PluginInstance,
    budget: Duration,
) -> Result<BTreeMap<String, String>, CallError> {
    live.collect(instance, budget).await
}

/// One collection round's input, shared by every plugin.
#[derive(Debug, Clone)]
pub struct Round {
    pub system: Arc<SystemSnapshot>,
    pub instances: Arc<Vec<PluginInstance>>,
}

/// What a plugin produced in a round: outputs by registry key for the
/// instances that succeeded, errors for the others.
#[derive(Debug)]
pub struct RoundResult {
    pub plugin: Arc<str>,
    /// Identifies which load of the plugin produced this, so a result from a
    /// replaced version is ignored.
    pub generation: u64,
    pub outputs: BTreeMap<String, BTreeMap<String, String>>,
    pub errors: Vec<(String, CallError)>,
}

/// The supervisor's end of a running plugin. Dropping it stops the task.
pub struct RunnerHandle {
    rounds: mpsc::Sender<Round>,
}

impl RunnerHandle {
    /// Queues a round; false if the plugin is still busy with the last one.
    pub fn offer(&self, round: Round) -> bool {
        self.rounds.try_send(round).is_ok()
    }
}

/// Starts the task that owns `live`.
pub fn spawn(
    engine: Arc<PluginEngine>,
    spec: Spec,
    live: Live,
    generation: u64,
    results: mpsc::Sender<RoundResult>,
    metrics: Metrics,
    tracker: &TaskTracker,
) -> RunnerHandle {
    // One round in flight and one queued is plenty: rounds are periodic.
    let (rounds_tx, mut rounds_rx) = mpsc::channel::<Round>(1);
    tracker.spawn(async move {
        let mut runner = Runner {
            engine,
            spec,
            live: Some(live),
            retry: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            retry_at: Instant::now(),
            recycling: false,
            metrics,
            generation,
        };
        while let Some(round) = rounds_rx.recv().await {
            let result = runner.run_round(round).await;
            if results.send(result).await.is_err() {
                break;
            }
        }
    });
    RunnerHandle { rounds: rounds_tx }
}

struct Runner {
    engine: Arc<PluginEngine>,
    spec: Spec,
    live: Option<Live>,
    retry: Backoff,
    retry_at: Instant,
    /// The instance was dropped on purpose (worn out), not after a failure.
    recycling: bool,
    metrics: Metrics,
    generation: u64,
}

impl Runner {
    fn label(&self, result: &'static str) -> PluginResultLabel {
        PluginResultLabel {
            plugin: self.spec.name.to_string(),
            result,
        }
    }

    fn backoff(&mut self) {
        self.retry_at = Instant::now() + self.retry.fail();
        self.live = None;
    }

    async fn run_round(&mut self, round: Round) -> RoundResult {
        let mut result = RoundResult {
            plugin: self.spec.name.clone(),
            generation: self.generation,
            outputs: BTreeMap::new(),
            errors: Vec::new(),
        };
        if self.live.is_none() {
            let now = Instant::now();
            if now < self.retry_at {
                let wait = self.retry_at - now;
                for instance in round.instances.iter() {
                    result
                        .errors
                        .push((instance.key.clone(), CallError::Backoff(wait)));
                }
                return result;
            }
            if !std::mem::take(&mut self.recycling) {
                self.metrics
                    .plugin_restarts
                    .get_or_create(&PluginLabel {
                        plugin: self.spec.name.to_string(),
                    })
                    .inc();
            }
            match instantiate(&self.engine, &self.spec, round.system.clone()).await {
                Ok((live, _)) => {
                    debug!(plugin = %self.spec.name, "plugin instance built");
                    self.live = Some(live);
                }
                Err(error) => {
                    self.backoff();
                    error!(plugin = %self.spec.name, %error, retry_in = ?(self.retry_at - Instant::now()), "plugin could not be rebuilt");
                    for instance in round.instances.iter() {
                        result.errors.push((instance.key.clone(), error.clone()));
                    }
                    return result;
                }
            }
        }
        let (ok, failed) = (self.label("ok"), self.label("error"));
        let latency = self
            .metrics
            .plugin_call_seconds
            .get_or_create_owned(&PluginLabel {
                plugin: self.spec.name.to_string(),
            });
        let live = self.live.as_mut().expect("set above");
        live.store.data_mut().system = round.system.clone();
        let budget = self.spec.limits.timeout;
        for instance in round.instances.iter() {
            let start = std::time::Instant::now();
            let outcome = live.collect(instance, budget).await;
            latency.observe(start.elapsed().as_secs_f64());
            match outcome {
                Ok(output) => {
                    self.metrics.plugin_calls.get_or_create(&ok).inc();
                    result.outputs.insert(instance.key.clone(), output);
                }
                Err(error) => {
                    self.metrics.plugin_calls.get_or_create(&failed).inc();
                    let poisoned = error.poisons();
                    result.errors.push((instance.key.clone(), error));
                    if poisoned {
                        break;
                    }
                }
            }
        }
        let poisoned = result.errors.iter().any(|(_, e)| e.poisons());
        if poisoned {
            self.backoff();
            let (key, error) = result.errors.last().expect("poisoned implies an error");
            error!(
                plugin = %self.spec.name,
                key = %key,
                service = %service_of(&round.instances, key),
                %error,
                retry_in = ?(self.retry_at - Instant::now()),
                "plugin failed; keeping its last good output and rebuilding it"
            );
        } else {
            for (key, error) in &result.errors {
                let service = service_of(&round.instances, key);
                warn!(plugin = %self.spec.name, key = %key, %service, %error, "plugin call failed; keeping its last good output");
            }
            if result.errors.is_empty() {
                self.retry.reset();
            }
            if self
                .live
                .as_ref()
                .is_some_and(|l| l.worn_out(self.spec.limits.memory))
            {
                debug!(plugin = %self.spec.name, "recycling the plugin instance (memory only grows)");
                self.live = None;
                self.recycling = true;
            }
        }
        result
    }
}

/// The `namespace/name/version` of the round's instance with etcd key `key`,
/// so a line about a call names the instance as registry lines do.
fn service_of(instances: &[PluginInstance], key: &str) -> String {
    instances
        .iter()
        .find(|i| i.key == key)
        .map_or_else(String::new, |i| i.instance.service_label())
}
