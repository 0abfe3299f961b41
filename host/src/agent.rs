//! The supervisor: owns the running config and the plugins, turns both into
//! the registry's target, and runs the shutdown sequence. Everything that
//! happens to the agent arrives as one [`Event`] (`next_event`) and is
//! handled by one `handle` that never waits: reading the config file,
//! scanning the plugins folder, compiling and initialising plugins, and
//! rebinding the admin listener all run beside the loop and come back as
//! events. So a signal, a watchdog ping or a config edit is never queued
//! behind a plugin that takes seconds to compile.
//!
//! Reload follows one path whatever triggered it (SIGHUP, an edit, a
//! rename, a ConfigMap swap, a swapped symlink): read and validate off the
//! loop, then apply the difference or keep the running config
//! ([`ReloadOutcome`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminServer, StatusRequest};
use crate::api::{self, ApiRequest, ApiServer};
use crate::checks::{self, CheckHost, CheckId, CheckReport};
use crate::config::{self, CheckStatus, Config, PluginsConfig};
use crate::desired::{self, Clash, PluginMetadata, Throttle};
use crate::instances_dir::{DirScan, InstancesDir};
use crate::local::{LocalState, Source};
use crate::metrics::{self, CheckLabel, Metrics};
use crate::plugins::{self, LoadOutcome, PluginHost, PluginInstance, Round, RoundResult, Scan};
use crate::record;
use crate::registry::{RegistryHandle, RegistryStatus};
use crate::state_dir::{self, Maintenance};
use crate::status::{AgentStatus, CheckStatusView, InstanceState, InstanceStatus};
use crate::systemd::Notifier;
use crate::watch::{self as folder_watch, FolderWatch, Watched};

mod local_control;

/// Quiet time after the last change signal before the config is re-read.
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet time after the last change in the plugins folder before a rescan.
const PLUGINS_DEBOUNCE: Duration = Duration::from_millis(200);
/// Quiet time after the last change in the instances folder before a rescan.
const INSTANCES_DEBOUNCE: Duration = Duration::from_millis(100);
/// A stream of signals cannot postpone a reload or rescan longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Round results in flight from plugin tasks to the supervisor.
const PLUGIN_RESULTS_CAPACITY: usize = 64;
/// Scans, loads and config reads finished beside the loop, waiting to be
/// handled: one of each is under way at a time per plugin, so a few slots.
const BESIDE_CAPACITY: usize = 16;
/// Results of one round arrive within microseconds of each other: waiting
/// this long after the first turns them into one write instead of one per
/// plugin.
const RESULTS_COALESCE: Duration = Duration::from_millis(20);
/// At start, registration waits this long at most for the plugins found in
/// the folder to load (from the compile cache that takes milliseconds; a
/// cold compile of a large component takes seconds, and registration does
/// not wait for it: its metadata is written when it comes).
const STARTUP_LOAD_WAIT: Duration = Duration::from_secs(2);
/// Then it waits at most one call's `timeout` plus this for their first
/// round, so the first record already carries their metadata.
const FIRST_ROUND_SLACK: Duration = Duration::from_millis(100);
/// `/status` requests waiting for the supervisor (each is answered at once).
const STATUS_REQUESTS_CAPACITY: usize = 8;

/// Requests from outside the agent: signals in production, the test in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deregister and stop (SIGINT, SIGTERM).
    Shutdown,
    /// Re-read the config file now (SIGHUP).
    Reload,
}

/// Everything the supervisor reacts to.
#[derive(Debug)]
enum Event {
    Control(Control),
    /// The control channel closed: nobody can ask us to stop any more, so stop.
    ControlClosed,
    /// Something changed in a folder the config file depends on.
    ConfigTouched,
    /// The debounce delay after `ConfigTouched` passed.
    ConfigSettled,
    /// A read of the config file finished.
    ConfigRead(Box<ConfigRead>),
    PluginsTouched,
    PluginsSettled,
    /// A scan of the plugins folder finished.
    PluginsScanned(Scan),
    /// A plugin finished loading (or failed to).
    PluginLoaded(LoadOutcome),
    CollectTick,
    PluginResult(RoundResult),
    /// Plugin results have settled: publish the new target.
    ResultsSettled,
    /// A start-up wait ran out.
    StartupDeadline,
    /// A new admin listener is serving (or the old one still is).
    AdminRebound(Option<AdminServer>),
    /// Something changed in the instances folder.
    InstancesTouched,
    InstancesSettled,
    /// A scan of the instances folder finished.
    InstancesScanned(DirScan),
    /// A request to the local API.
    Api(ApiRequest),
    /// The TTL of an API registration ran out (unless passed meanwhile).
    TtlDue,
    /// A health check ran.
    CheckReport(CheckReport),
    /// The admin server asks what `ygg-agent status` shows.
    StatusRequest(StatusRequest),
    /// The registry's status changed (readiness, counts, connection).
    RegistryStatus(RegistryStatus),
    WatchdogTick,
    /// A plugin-only change held back by `minRewriteInterval` may go out.
    RewriteDue,
}

/// What `run` needs besides the config it starts with.
pub struct RunOptions {
    /// The file to watch and re-read.
    pub config_path: PathBuf,
    /// The SHA-256 of the bytes the starting config was parsed from: a
    /// file event that finds the same bytes changes nothing.
    pub config_digest: [u8; 32],
    pub metrics: Metrics,
}

/// What a reload did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is running.
    Applied,
    /// The same bytes as last time, or a valid file equal to the running
    /// config: nothing to do.
    Unchanged,
    /// Unreadable or invalid: the running config stays, for these reasons.
    Refused(Vec<String>),
}

/// Debounces a burst of signals into one action.
#[derive(Debug, Default)]
struct Debounce {
    due: Option<Instant>,
    first: Option<Instant>,
}

impl Debounce {
    fn touch(&mut self, quiet: Duration) {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        self.due = Some((now + quiet).min(first + MAX_DEBOUNCE));
    }

    fn take(&mut self) {
        self.due = None;
        self.first = None;
    }
}

/// `sleep_until(due)`, or never.
async fn until(due: Option<Instant>) {
    match due {
        Some(due) => sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// What reading the config file found (off the loop).
#[derive(Debug)]
pub struct ConfigRead {
    /// SHA-256 of the bytes read and what they parsed to, or why the file
    /// could not be read.
    file: Result<([u8; 32], Parsed), String>,
    /// The folders to watch for the file now (its symlink chain resolved
    /// again: a swapped link can change it).
    watch: BTreeSet<PathBuf>,
    /// SIGHUP: apply even when the bytes did not change.
    forced: bool,
}

/// A valid config, or every problem found in the file.
type Parsed = Result<config::Loaded, Vec<String>>;

/// Reads and validates the config file. Blocking: runs off the loop.
fn read_config(path: &Path, forced: bool) -> ConfigRead {
    let watch = folder_watch::folders_to_watch(path, Watched::File);
    let file = std::fs::read(path)
        .map_err(|error| error.to_string())
        .map(|bytes| {
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let parsed = match String::from_utf8(bytes) {
                Err(_) => Err(vec![format!("{} is not UTF-8 text", path.display())]),
                Ok(text) => config::parse(&text, &config::base_dir(path))
                    .map_err(|issues| issues.iter().map(ToString::to_string).collect()),
            };
            (digest, parsed)
        });
    ConfigRead {
        file,
        watch,
        forced,
    }
}

/// The start-up phase: registration waits (boundedly) for the plugins in
/// the folder to load and answer once, so the first record carries their
/// metadata.
#[derive(Debug)]
struct Startup {
    /// Until when to wait for the loads.
    loads_until: Instant,
    /// Once the first round is out: until when to wait for it, and how many
    /// plugins have not answered yet.
    round: Option<(Instant, usize)>,
}

/// What the start-up phase wants done next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartupStep {
    Wait,
    /// Send the first round to every loaded plugin.
    FirstRound,
    /// Start registering.
    Register,
}

impl Startup {
    fn new(now: Instant) -> Startup {
        Startup {
            loads_until: now + STARTUP_LOAD_WAIT,
            round: None,
        }
    }

    fn deadline(&self) -> Instant {
        self.round.map_or(self.loads_until, |(until, _)| until)
    }

    /// `loads_done`: no scan or load is under way.
    fn step(&self, now: Instant, loads_done: bool) -> StartupStep {
        match self.round {
            None if loads_done || now >= self.loads_until => StartupStep::FirstRound,
            None => StartupStep::Wait,
            Some((until, waiting)) if waiting > 0 && now < until => StartupStep::Wait,
            Some(_) => StartupStep::Register,
        }
    }

    /// The first round went to `plugins` plugins, each with `timeout`.
    fn round_sent(&mut self, now: Instant, plugins: usize, timeout: Duration) {
        self.round = Some((now + timeout + FIRST_ROUND_SLACK, plugins));
    }

    /// A plugin answered the first round.
    fn answered(&mut self) {
        if let Some((_, waiting)) = self.round.as_mut() {
            *waiting = waiting.saturating_sub(1);
        }
    }

    fn waiting_for_loads(&self) -> bool {
        self.round.is_none()
    }
}

/// Everything that exists only while `agent.plugins` is configured.
struct PluginsRuntime {
    host: PluginHost,
    watch: Option<FolderWatch>,
    debounce: Debounce,
    collect_timer: Interval,
    /// The plugins' last good output, by plugin and instance.
    metadata: PluginMetadata,
    /// When merged plugin results are due to be published.
    publish_due: Option<Instant>,
    /// Clashes reported so far, so each is reported once.
    clashes: Vec<Clash>,
}

impl PluginsRuntime {
    /// Creates the plugin host and starts the first scan. `None` (logged)
    /// when the engine cannot start: the agent runs without plugins.
    fn start(config: &PluginsConfig, wiring: &Wiring) -> Option<PluginsRuntime> {
        let watch = match FolderWatch::new(wiring.plugins_signals.clone()) {
            Ok(watch) => Some(watch),
            Err(error) => {
                warn!(dir = %config.dir.display(), %error, "cannot watch the plugins folder; changes apply on SIGHUP");
                None
            }
        };
        match PluginHost::new(
            config.clone(),
            wiring.plugins.clone(),
            wiring.metrics.clone(),
            wiring.tracker.clone(),
        ) {
            Ok(mut host) => {
                host.scan();
                Some(PluginsRuntime {
                    host,
                    watch,
                    debounce: Debounce::default(),
                    collect_timer: collect_timer(config.interval),
                    metadata: PluginMetadata::new(),
                    publish_due: None,
                    clashes: Vec::new(),
                })
            }
            Err(error) => {
                error!(%error, "cannot start the WebAssembly engine; running without plugins");
                None
            }
        }
    }

    /// Keeps the outputs that succeeded; failed calls leave the last good
    /// output. False for a result of a replaced or unloaded version.
    fn merge(&mut self, result: RoundResult) -> bool {
        if !self.host.is_current(&result) {
            return false;
        }
        let per_instance = self.metadata.entry(result.plugin.to_string()).or_default();
        for (key, output) in result.outputs {
            per_instance.insert(key, output);
        }
        true
    }

    /// Watches what the last scan says the folder resolves to. True when a
    /// folder was added: a change there before the watch began would be
    /// missed, so the caller scans again.
    fn watch(&mut self, folders: &BTreeSet<PathBuf>) -> bool {
        let Some(watch) = self.watch.as_mut() else {
            return false;
        };
        let added = folders.difference(watch.folders()).count() > 0;
        for (folder, error) in watch.set(folders) {
            warn!(dir = %folder.display(), %error, "cannot watch this folder; plugin changes there apply on SIGHUP");
        }
        added
    }
}

/// Everything that exists only while `agent.instancesDir` is configured.
struct InstancesRuntime {
    dir: PathBuf,
    /// `agent.checks` when the folder was set up: a change restarts it.
    defaults: config::CheckTiming,
    state: InstancesDir,
    watch: Option<FolderWatch>,
    debounce: Debounce,
    /// A scan is under way; `again`: another was asked for meanwhile.
    scanning: bool,
    again: bool,
}

/// Where one instance of the effective config comes from.
#[derive(Debug, Clone)]
struct InstanceSource {
    /// Its id in the local API: the API registration's id, else the last
    /// segment of its key.
    id: String,
    source: Source,
    /// `agent.yaml agent.instances[0]`, `…/a.yaml [2]`, `API registration app-1`.
    origin: String,
    key: String,
    /// What its maintenance and drains are kept by (`local::identity`).
    identity: String,
}

/// What the supervisor hands to things it starts beside the loop.
struct Wiring {
    metrics: Metrics,
    tracker: TaskTracker,
    plugins: plugins::Outbox,
    plugins_signals: mpsc::Sender<()>,
    config_reads: mpsc::Sender<ConfigRead>,
    admin: mpsc::Sender<Option<AdminServer>>,
    status_requests: mpsc::Sender<StatusRequest>,
    instances_signals: mpsc::Sender<()>,
    instance_scans: mpsc::Sender<DirScan>,
}

/// What the supervisor listens to.
struct Inbox {
    control: mpsc::Receiver<Control>,
    config_signals: mpsc::Receiver<()>,
    config_reads: mpsc::Receiver<ConfigRead>,
    plugins_signals: mpsc::Receiver<()>,
    results: mpsc::Receiver<RoundResult>,
    scans: mpsc::Receiver<Scan>,
    loads: mpsc::Receiver<LoadOutcome>,
    admin: mpsc::Receiver<Option<AdminServer>>,
    check_reports: mpsc::Receiver<CheckReport>,
    status_requests: mpsc::Receiver<StatusRequest>,
    instances_signals: mpsc::Receiver<()>,
    instance_scans: mpsc::Receiver<DirScan>,
    api_requests: mpsc::Receiver<ApiRequest>,
    registry_status: watch::Receiver<RegistryStatus>,
    watchdog: Option<Interval>,
}

/// The admin listener, and a rebind under way.
struct Admin {
    server: Option<AdminServer>,
    /// The address the config asks for.
    wanted: Option<SocketAddr>,
    /// A rebind task holds the server until it reports back.
    rebinding: bool,
}

/// Whether a running config reload is under way, and what comes after it.
#[derive(Debug, Default)]
struct Reading {
    running: bool,
    /// Another read was asked for meanwhile (`Some(forced)`).
    again: Option<bool>,
}

struct Supervisor {
    config_path: PathBuf,
    config: Config,
    /// The config with the instances of every other source (the instances
    /// folder) appended, checks beside them: what the target, the checks,
    /// the plugins' rounds and `/status` are built from.
    effective: Config,
    /// Where each instance of `effective` comes from, index for index.
    sources: Vec<InstanceSource>,
    instances: Option<InstancesRuntime>,
    /// API registrations, maintenance, drains.
    local: LocalState,
    api: Option<ApiServer>,
    /// `agent.checks` for the API server's validation of registrations.
    check_defaults: watch::Sender<config::CheckTiming>,
    /// Writes maintenance to the state folder (if there is one).
    state_writer: Option<watch::Sender<Maintenance>>,
    /// What the last read of the config file found: the SHA-256 of its
    /// bytes (good or bad config), or why it could not be read. A watcher
    /// signal that changes neither costs one read and nothing else.
    last_read: Result<[u8; 32], String>,
    reading: Reading,
    config_watch: Option<FolderWatch>,
    config_debounce: Debounce,
    plugins: Option<PluginsRuntime>,
    checks: CheckHost,
    /// Instances held out of the target: a health check is critical.
    withheld: BTreeSet<String>,
    /// Each configured instance's service label, by registry key.
    services: BTreeMap<String, String>,
    /// Holds back plugin-only rewrites (`minRewriteInterval`), and when
    /// the earliest held one is due.
    rewrites: Throttle,
    rewrite_due: Option<Instant>,
    startup: Option<Startup>,
    registry: RegistryHandle,
    admin: Admin,
    systemd: Notifier,
    wiring: Wiring,
    inbox: Inbox,
}

/// Runs the agent until `control` says stop (or closes), then deregisters
/// within the config's `shutdownTimeout`.
pub async fn run(options: RunOptions, config: Config, control: mpsc::Receiver<Control>) {
    let mut supervisor = Supervisor::start(options, config, control).await;
    while let Some(event) = supervisor.next_event().await {
        if !supervisor.handle(event) {
            break;
        }
    }
    supervisor.shutdown().await;
}

impl Supervisor {
    async fn start(options: RunOptions, config: Config, control: mpsc::Receiver<Control>) -> Self {
        let tracker = TaskTracker::new();
        let (results_tx, results_rx) = mpsc::channel(PLUGIN_RESULTS_CAPACITY);
        let (scans_tx, scans_rx) = mpsc::channel(BESIDE_CAPACITY);
        let (loads_tx, loads_rx) = mpsc::channel(BESIDE_CAPACITY);
        let (reads_tx, reads_rx) = mpsc::channel(BESIDE_CAPACITY);
        let (admin_tx, admin_rx) = mpsc::channel(1);
        let (status_tx, status_rx) = mpsc::channel(STATUS_REQUESTS_CAPACITY);
        let (config_signals_tx, config_signals_rx) = mpsc::channel(1);
        let (plugins_signals_tx, plugins_signals_rx) = mpsc::channel(1);
        let (instances_signals_tx, instances_signals_rx) = mpsc::channel(1);
        let (instance_scans_tx, instance_scans_rx) = mpsc::channel(BESIDE_CAPACITY);

        let config_watch = match FolderWatch::new(config_signals_tx) {
            Ok(mut watch) => {
                let folders = folder_watch::folders_to_watch(&options.config_path, Watched::File);
                for (folder, error) in watch.set(&folders) {
                    warn!(dir = %folder.display(), %error, "cannot watch this folder; reload with SIGHUP");
                }
                Some(watch)
            }
            Err(error) => {
                warn!(path = %options.config_path.display(), %error, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };

        // Registration waits for the plugins' first round (boundedly): the
        // registry starts idle and gets its first target when that is over.
        let registry = RegistryHandle::spawn(None, options.metrics.clone(), &tracker);
        let registry_status = registry.status();
        let systemd = Notifier::from_env();
        let watchdog = systemd.watchdog_every.map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        // Check plugins: the plugin host publishes them, the checks read.
        let (check_plugins_tx, check_plugins) = watch::channel(plugins::CheckPlugins::default());
        let wiring = Wiring {
            metrics: options.metrics,
            tracker,
            plugins: plugins::Outbox {
                results: results_tx,
                scans: scans_tx,
                loads: loads_tx,
                check_plugins: check_plugins_tx,
            },
            plugins_signals: plugins_signals_tx,
            config_reads: reads_tx,
            admin: admin_tx,
            status_requests: status_tx,
            instances_signals: instances_signals_tx,
            instance_scans: instance_scans_tx,
        };
        let admin_server = match config.agent.admin.as_ref() {
            Some(admin) => {
                serve_admin(
                    admin.listen,
                    admin_sources(&wiring, &registry_status),
                    &wiring.tracker,
                )
                .await
            }
            None => None,
        };
        let plugins = config
            .agent
            .plugins
            .as_ref()
            .and_then(|p| PluginsRuntime::start(p, &wiring));
        let (checks, check_reports) = CheckHost::new(wiring.tracker.clone(), check_plugins);
        let instances = config.agent.local.instances_dir.clone().map(|dir| {
            InstancesRuntime::new(dir, config.agent.local.check_defaults.clone(), &wiring)
        });
        let (api_tx, api_rx) = mpsc::channel(api::API_REQUESTS_CAPACITY);
        let (defaults_tx, defaults_rx) = watch::channel(config.agent.local.check_defaults.clone());
        let api = match config.agent.local.api.as_ref() {
            Some(api_config) => {
                match api::start(api_config, api_tx, defaults_rx, &wiring.tracker).await {
                    Ok(server) => Some(server),
                    Err(error) => {
                        error!(%error, "cannot start the local API; running without it (fix agent.api and restart)");
                        None
                    }
                }
            }
            None => None,
        };
        // Maintenance outlives restarts: read before the first target.
        let local = &config.agent.local;
        let state_dir = (local.api.is_some() || local.state_dir.is_some())
            .then(|| state_dir::resolve(local.state_dir.as_deref()))
            .flatten();
        let maintenance = match state_dir.clone() {
            Some(dir) => tokio::task::spawn_blocking(move || state_dir::load(&dir))
                .await
                .unwrap_or_default(),
            None => Maintenance::default(),
        };
        if maintenance != Maintenance::default() {
            info!(node = ?maintenance.node, instances = maintenance.instances.len(), "maintenance in force from the state folder");
        }
        let state_writer =
            state_dir.map(|dir| state_dir::writer(dir, maintenance.clone(), &wiring.tracker));
        let mut supervisor = Supervisor {
            config_path: options.config_path,
            effective: config.clone(),
            sources: Vec::new(),
            instances,
            local: LocalState::new(maintenance),
            api,
            check_defaults: defaults_tx,
            state_writer,
            last_read: Ok(options.config_digest),
            reading: Reading::default(),
            config_watch,
            config_debounce: Debounce::default(),
            plugins,
            checks,
            withheld: BTreeSet::new(),
            rewrites: Throttle::new(min_rewrite_interval(&config)),
            rewrite_due: None,
            services: BTreeMap::new(),
            startup: Some(Startup::new(Instant::now())),
            registry,
            admin: Admin {
                server: admin_server,
                wanted: config.agent.admin.as_ref().map(|a| a.listen),
                rebinding: false,
            },
            systemd,
            config,
            wiring,
            inbox: Inbox {
                control,
                config_signals: config_signals_rx,
                config_reads: reads_rx,
                plugins_signals: plugins_signals_rx,
                results: results_rx,
                scans: scans_rx,
                loads: loads_rx,
                admin: admin_rx,
                check_reports,
                status_requests: status_rx,
                instances_signals: instances_signals_rx,
                instance_scans: instance_scans_rx,
                api_requests: api_rx,
                registry_status,
                watchdog,
            },
        };
        supervisor.refresh_effective();
        supervisor.set_checks();
        supervisor.advance_startup();
        supervisor
    }

    /// The next thing to react to; `None` never happens while the
    /// supervisor holds its own senders, but ends the loop if it does.
    async fn next_event(&mut self) -> Option<Event> {
        let inbox = &mut self.inbox;
        let plugins = self.plugins.as_mut();
        let (plugins_due, publish_due, collect) = match plugins {
            Some(p) => (p.debounce.due, p.publish_due, Some(&mut p.collect_timer)),
            None => (None, None, None),
        };
        let startup_due = self.startup.as_ref().map(Startup::deadline);
        let instances_due = self.instances.as_ref().and_then(|i| i.debounce.due);
        let ttl_due = self.local.next_due();
        let event = tokio::select! {
            message = inbox.control.recv() => match message {
                Some(control) => Event::Control(control),
                None => Event::ControlClosed,
            },
            Some(()) = inbox.config_signals.recv() => Event::ConfigTouched,
            Some(read) = inbox.config_reads.recv() => Event::ConfigRead(Box::new(read)),
            Some(()) = inbox.plugins_signals.recv() => Event::PluginsTouched,
            Some(scan) = inbox.scans.recv() => Event::PluginsScanned(scan),
            Some(outcome) = inbox.loads.recv() => Event::PluginLoaded(outcome),
            Some(result) = inbox.results.recv() => Event::PluginResult(result),
            Some(server) = inbox.admin.recv() => Event::AdminRebound(server),
            Some(report) = inbox.check_reports.recv() => Event::CheckReport(report),
            Some(request) = inbox.status_requests.recv() => Event::StatusRequest(request),
            Some(()) = inbox.instances_signals.recv() => Event::InstancesTouched,
            Some(scan) = inbox.instance_scans.recv() => Event::InstancesScanned(scan),
            () = until(instances_due) => Event::InstancesSettled,
            Some(request) = inbox.api_requests.recv() => Event::Api(request),
            () = until(ttl_due) => Event::TtlDue,
            () = until(self.config_debounce.due) => Event::ConfigSettled,
            () = until(plugins_due) => Event::PluginsSettled,
            () = until(publish_due) => Event::ResultsSettled,
            () = until(startup_due) => Event::StartupDeadline,
            () = until(self.rewrite_due) => Event::RewriteDue,
            _ = async { collect.expect("guarded").tick().await }, if collect.is_some() => Event::CollectTick,
            Ok(()) = inbox.registry_status.changed() => Event::RegistryStatus(inbox.registry_status.borrow_and_update().clone()),
            _ = async { inbox.watchdog.as_mut().expect("guarded").tick().await }, if inbox.watchdog.is_some() => Event::WatchdogTick,
        };
        Some(event)
    }

    /// Reacts to one event without waiting on anything. False: stop.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Control(Control::Shutdown) | Event::ControlClosed => return false,
            Event::Control(Control::Reload) => {
                // SIGHUP re-reads everything: the fallback where file
                // events do not arrive (network file systems).
                self.config_debounce.take();
                self.read_config(true);
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.debounce.take();
                    plugins.host.scan();
                }
                if let Some(instances) = self.instances.as_mut() {
                    instances.scan(&self.wiring);
                }
            }
            Event::ConfigTouched => self.config_debounce.touch(CONFIG_DEBOUNCE),
            Event::ConfigSettled => {
                self.config_debounce.take();
                self.read_config(false);
            }
            Event::ConfigRead(read) => {
                let outcome = self.apply_read(*read);
                tracing::debug!(?outcome, "config read handled");
            }
            Event::PluginsTouched => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.debounce.touch(PLUGINS_DEBOUNCE);
                }
            }
            Event::PluginsSettled => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.debounce.take();
                    plugins.host.scan();
                }
            }
            Event::PluginsScanned(scan) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    let folders = scan.watch.clone();
                    let changes = plugins.host.apply_scan(scan);
                    if plugins.watch(&folders) {
                        plugins.host.scan();
                    }
                    self.apply_plugin_changes(changes);
                }
                self.advance_startup();
            }
            Event::PluginLoaded(outcome) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    let changes = plugins.host.finish_load(outcome);
                    self.apply_plugin_changes(changes);
                }
                self.advance_startup();
            }
            Event::CollectTick => {
                if self.startup.is_none() {
                    self.start_round(None);
                }
            }
            Event::PluginResult(result) => self.take_result(result),
            Event::ResultsSettled => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.publish_due = None;
                }
                self.publish();
            }
            Event::StartupDeadline => self.advance_startup(),
            Event::AdminRebound(server) => {
                self.admin.server = server;
                self.admin.rebinding = false;
                let serving = self.admin.server.as_ref().map(|s| s.listen);
                if serving != self.admin.wanted {
                    self.rebind_admin();
                }
            }
            Event::InstancesTouched => {
                if let Some(instances) = self.instances.as_mut() {
                    instances.debounce.touch(INSTANCES_DEBOUNCE);
                }
            }
            Event::InstancesSettled => {
                if let Some(instances) = self.instances.as_mut() {
                    instances.scan(&self.wiring);
                }
            }
            Event::InstancesScanned(scan) => {
                self.apply_instances_scan(scan);
                self.advance_startup();
            }
            Event::Api(request) => {
                let reply = self.api_call(request.call);
                let _ = request.reply.send(reply);
            }
            Event::TtlDue => {
                let expired = self.local.expire(Instant::now());
                for id in &expired {
                    let (service, key) = self.service_and_key(id);
                    warn!(%id, %service, %key, "TTL missed: instance withheld until its app passes again");
                }
                if !expired.is_empty() {
                    self.publish();
                }
            }
            Event::CheckReport(report) => self.take_check_report(report),
            Event::StatusRequest(reply) => {
                let _ = reply.send(self.status());
            }
            Event::RegistryStatus(status) => self.systemd.registry(&status),
            Event::WatchdogTick => self.systemd.watchdog(),
            Event::RewriteDue => {
                self.rewrite_due = None;
                self.publish();
            }
        }
        true
    }

    /// Moves the start-up phase on: once the loads are done (or their wait
    /// ran out) the first round goes out; once it is answered (or its wait
    /// ran out) registration starts.
    fn advance_startup(&mut self) {
        let Some(startup) = self.startup.as_mut() else {
            return;
        };
        let now = Instant::now();
        let loads_done = self.plugins.as_ref().is_none_or(|p| p.host.is_settled())
            && self.instances.as_ref().is_none_or(|i| i.state.scanned());
        match startup.step(now, loads_done) {
            StartupStep::Wait => return,
            StartupStep::FirstRound => {
                let offered = match self.plugins.as_mut() {
                    Some(plugins) if !self.effective.agent.instances.is_empty() => {
                        plugins.host.start_round(&round(&self.effective), None)
                    }
                    _ => 0,
                };
                if offered > 0 {
                    let timeout = self
                        .plugins
                        .as_ref()
                        .map_or(Duration::ZERO, |p| p.host.config().timeout);
                    startup.round_sent(now, offered, timeout);
                    return;
                }
            }
            StartupStep::Register => {}
        }
        self.startup = None;
        info!(
            instances = self.effective.agent.instances.len(),
            plugins = self.plugins.as_ref().map_or(0, |p| p.host.loaded().len()),
            endpoints = %self.config.registry.client.endpoints.join(","),
            prefix = %self.config.registry.prefix,
            "agent started"
        );
        self.publish();
    }

    fn publish(&mut self) {
        if self.startup.is_some() {
            return;
        }
        let empty = PluginMetadata::new();
        let metadata = self.plugins.as_ref().map_or(&empty, |p| &p.metadata);
        let (target, clashes) = desired::build(&self.effective, metadata, &self.held_out());
        let (target, due) = self.rewrites.apply(Instant::now(), target);
        self.rewrite_due = due;
        self.registry.set_target(target);
        if let Some(plugins) = self.plugins.as_mut() {
            report_clashes(&mut plugins.clashes, clashes);
        }
    }

    fn start_round(&mut self, only: Option<&[String]>) {
        if self.effective.agent.instances.is_empty() {
            return;
        }
        if let Some(plugins) = self.plugins.as_mut() {
            plugins.host.start_round(&round(&self.effective), only);
        }
    }

    fn take_result(&mut self, result: RoundResult) {
        let Some(plugins) = self.plugins.as_mut() else {
            return;
        };
        if !plugins.merge(result) {
            return;
        }
        plugins
            .publish_due
            .get_or_insert_with(|| Instant::now() + RESULTS_COALESCE);
        if let Some(startup) = self.startup.as_mut() {
            startup.answered();
            self.advance_startup();
        }
    }

    fn apply_plugin_changes(&mut self, changes: plugins::Changes) {
        let Some(plugins) = self.plugins.as_mut() else {
            return;
        };
        let mut changed = false;
        for name in &changes.stopped {
            changed |= plugins.metadata.remove(name).is_some();
        }
        if changed {
            self.publish();
        }
        // During start-up the first round goes to every plugin at once.
        let waiting_for_loads = self
            .startup
            .as_ref()
            .is_some_and(Startup::waiting_for_loads);
        if !changes.started.is_empty() && !waiting_for_loads {
            // Old output of a replaced plugin stays until the new one answers.
            self.start_round(Some(&changes.started));
        }
    }

    /// Makes the running health checks those of the current config (an
    /// unchanged check keeps its state and schedule), forgets the metric
    /// series of checks that are gone, and updates what is withheld.
    fn set_checks(&mut self) {
        let prefix = &self.effective.registry.prefix;
        let wanted =
            checks::from_config(&self.effective.agent, |i| record::registry_key(prefix, i));
        let services = self
            .effective
            .agent
            .instances
            .iter()
            .map(|i| (record::registry_key(prefix, i), i.service_label()))
            .collect();
        let labels =
            |host: &CheckHost, services: &BTreeMap<String, String>| -> BTreeSet<CheckLabel> {
                host.iter()
                    .map(|view| check_label(services, view.id, view.config))
                    .collect()
            };
        let before = labels(&self.checks, &self.services);
        self.services = services;
        // Each new check gets its metric series; its task updates them
        // after every run.
        let metrics = &self.wiring.metrics;
        let names = &self.services;
        self.checks.set_with_series(wanted, |id, config| {
            let label = check_label(names, id, config);
            Some(checks::CheckSeries {
                status: metrics.check_status.get_or_create_owned(&label),
                seconds: metrics.check_seconds.get_or_create_owned(&label),
            })
        });
        let after = labels(&self.checks, &self.services);
        for gone in before.difference(&after) {
            self.wiring.metrics.check_status.remove(gone);
            self.wiring.metrics.check_seconds.remove(gone);
        }
        self.update_withheld(None);
    }

    /// A health check ran: count it, and if its instance's health changed,
    /// publish the new target.
    fn take_check_report(&mut self, report: CheckReport) {
        let cause = report.changed.then(|| report.clone());
        if !self.checks.record(report) {
            return; // from a check since removed or changed
        }
        // Only a run that changed its check's status can change what is
        // withheld: a thousand steady checks cost no more than this.
        if let Some(cause) = cause
            && self.update_withheld(Some(&cause))
        {
            self.publish();
        }
    }

    /// Recomputes which instances are withheld; logs each instance whose
    /// health changed, with the reason. True when the set changed.
    fn update_withheld(&mut self, cause: Option<&CheckReport>) -> bool {
        let withheld = self.checks.withheld();
        if withheld == self.withheld {
            return false;
        }
        for key in withheld.difference(&self.withheld) {
            let service = self.services.get(key).map_or("", String::as_str);
            let failed = cause.filter(|r| &r.id.instance_key == key);
            match failed.and_then(|r| Some((r, self.checks.get(&r.id)?))) {
                Some((report, view)) => warn!(
                    %service, %key,
                    "instance unhealthy: check {} failed {} time{} in a row: {}",
                    checks::describe(&view.config.probe),
                    report.consecutive,
                    if report.consecutive == 1 { "" } else { "s" },
                    report.last.as_ref().err().map_or("", String::as_str),
                ),
                None => info!(%service, %key, "instance withheld until its health checks pass"),
            }
        }
        for key in self.withheld.difference(&withheld) {
            if let Some(service) = self.services.get(key) {
                info!(%service, %key, "instance healthy again");
            }
        }
        self.wiring
            .metrics
            .instances_withheld
            .set(withheld.len() as i64);
        self.withheld = withheld;
        true
    }

    /// What `ygg-agent status` shows.
    fn status(&self) -> AgentStatus {
        let held_out = self.held_out();
        let prefix = &self.effective.registry.prefix;
        let instances = self
            .effective
            .agent
            .instances
            .iter()
            .enumerate()
            .map(|(index, instance)| {
                let key = record::registry_key(prefix, instance);
                let count = self.effective.agent.checks.get(index).map_or(0, Vec::len);
                let checks = (0..count)
                    .filter_map(|position| {
                        let id = CheckId {
                            instance_key: key.clone(),
                            index: position,
                        };
                        let view = self.checks.get(&id)?;
                        let latest = self.checks.latest(&id);
                        Some(CheckStatusView {
                            check: checks::describe(&view.config.probe),
                            status: match view.status {
                                CheckStatus::Passing => "passing",
                                CheckStatus::Critical => "critical",
                            }
                            .to_string(),
                            output: latest.as_ref().map_or_else(String::new, |last| {
                                match &last.last {
                                    Ok(output) => output.clone(),
                                    Err(reason) => reason.clone(),
                                }
                            }),
                            duration_ms: latest
                                .as_ref()
                                .map(|last| last.duration.as_secs_f64() * 1000.0),
                        })
                    })
                    .collect();
                InstanceStatus {
                    state: if held_out.contains(&key) {
                        InstanceState::Withheld
                    } else {
                        InstanceState::Registered
                    },
                    service: instance.service_label(),
                    key,
                    checks,
                }
            })
            .collect();
        AgentStatus { instances }
    }

    /// Starts a read of the config file beside the loop (one at a time; a
    /// request meanwhile runs one more read after it). `forced` (SIGHUP)
    /// applies even when the bytes did not change.
    fn read_config(&mut self, forced: bool) {
        if self.reading.running {
            self.reading.again = Some(self.reading.again.unwrap_or(false) || forced);
            return;
        }
        self.reading.running = true;
        let path = self.config_path.clone();
        let reads = self.wiring.config_reads.clone();
        self.wiring.tracker.spawn(async move {
            if let Ok(read) = tokio::task::spawn_blocking(move || read_config(&path, forced)).await
            {
                let _ = reads.send(read).await;
            }
        });
    }

    /// Takes a finished read: watches what the file resolves to now, and
    /// applies the new config if it is valid and different.
    fn apply_read(&mut self, read: ConfigRead) -> ReloadOutcome {
        self.reading.running = false;
        let mut again = self.reading.again.take();
        if let Some(watch) = self.config_watch.as_mut() {
            let added = read.watch.difference(watch.folders()).count() > 0;
            for (folder, error) in watch.set(&read.watch) {
                warn!(dir = %folder.display(), %error, "cannot watch this folder; reload with SIGHUP");
            }
            // A change in a newly watched folder before the watch began
            // would be missed: read once more.
            if added {
                again.get_or_insert(false);
            }
        }
        let outcome = self.reload(read);
        if let Some(forced) = again {
            self.read_config(forced);
        }
        outcome
    }

    fn reload(&mut self, read: ConfigRead) -> ReloadOutcome {
        let path = self.config_path.display().to_string();
        let (digest, parsed) = match read.file {
            Ok(file) => file,
            Err(error) => {
                // Deleted, replaced by a folder, unreadable: keep running on
                // what we have; the next good save applies normally.
                let problems = vec![format!("cannot read config file {path}: {error}")];
                if read.forced || self.last_read.as_ref().err() != Some(&error) {
                    self.reload_failed(&problems);
                }
                self.last_read = Err(error);
                return ReloadOutcome::Refused(problems);
            }
        };
        if !read.forced && self.last_read == Ok(digest) {
            return ReloadOutcome::Unchanged;
        }
        self.last_read = Ok(digest);
        let loaded = match parsed {
            Ok(loaded) => loaded,
            Err(problems) => {
                self.reload_failed(&problems);
                return ReloadOutcome::Refused(problems);
            }
        };
        for warning in &loaded.warnings {
            warn!(%warning, "config warning");
        }
        self.wiring
            .metrics
            .config_reloads
            .get_or_create(&metrics::OK)
            .inc();
        if loaded.config == self.config {
            info!(path = %path, "config reloaded: no change");
            return ReloadOutcome::Unchanged;
        }
        let clashes = self.clashes_with_other_sources(&loaded.config);
        if !clashes.is_empty() {
            self.reload_failed(&clashes);
            return ReloadOutcome::Refused(clashes);
        }
        self.apply(loaded.config);
        ReloadOutcome::Applied
    }

    /// Logs a failed reload: one line saying so, then one line per problem.
    fn reload_failed(&mut self, problems: &[String]) {
        self.wiring
            .metrics
            .config_reloads
            .get_or_create(&metrics::ERROR)
            .inc();
        let path = self.config_path.display();
        error!(path = %path, errors = problems.len(), "config reload failed; the running config stays in force");
        for problem in problems {
            error!(path = %path, "config error: {problem}");
        }
    }

    /// Applies a new valid config as a difference from the running one.
    fn apply(&mut self, new: Config) {
        let empty = PluginMetadata::new();
        let metadata = self.plugins.as_ref().map_or(&empty, |p| &p.metadata);
        let old_target = desired::build(&self.effective, metadata, &self.held_out()).0;
        let plugins_changed = new.agent.plugins != self.config.agent.plugins;
        let admin_changed = new.agent.admin != self.config.agent.admin;
        let registry_changed = new.registry != self.config.registry;
        let instances_changed = new.agent.instances != self.config.agent.instances;
        let old_plugins = self.config.agent.plugins.clone();
        let old_local = self.config.agent.local.clone();
        self.config = new;
        self.rewrites.set_min(min_rewrite_interval(&self.config));
        self.apply_local_config(&old_local, instances_changed || registry_changed);
        self.refresh_effective();

        // The checks follow the new instances (and `services` holds their
        // keys); plugin metadata of instances that no longer exist is
        // dropped.
        self.set_checks();
        if let Some(plugins) = self.plugins.as_mut() {
            for per_instance in plugins.metadata.values_mut() {
                per_instance.retain(|key, _| self.services.contains_key(key));
            }
        }
        let metadata = self.plugins.as_ref().map_or(&empty, |p| &p.metadata);
        let new_target = desired::build(&self.effective, metadata, &self.held_out()).0;
        let added = new_target
            .records
            .keys()
            .filter(|k| !old_target.records.contains_key(*k))
            .count();
        let removed = old_target
            .records
            .keys()
            .filter(|k| !new_target.records.contains_key(*k))
            .count();
        let changed = new_target
            .records
            .iter()
            .filter(|(k, r)| old_target.records.get(*k).is_some_and(|old| old != *r))
            .count();
        info!(
            path = %self.config_path.display(),
            added, removed, changed,
            registry_settings_changed = registry_changed,
            plugins_changed,
            "config reloaded: applying the changes"
        );

        if plugins_changed {
            self.apply_plugins_config(old_plugins);
        }
        if admin_changed {
            self.admin.wanted = self.config.agent.admin.as_ref().map(|a| a.listen);
            self.rebind_admin();
        }
        self.publish();
        if instances_changed || registry_changed {
            // New or moved instances get their plugin metadata right away.
            self.start_round(None);
        }
    }

    fn apply_plugins_config(&mut self, old: Option<PluginsConfig>) {
        match (old, self.config.agent.plugins.clone()) {
            (_, None) => {
                if self.plugins.take().is_some() {
                    info!("plugins turned off; unloading them");
                }
            }
            (None, Some(new)) => {
                self.plugins = PluginsRuntime::start(&new, &self.wiring);
            }
            (Some(old), Some(new)) => {
                let Some(plugins) = self.plugins.as_mut() else {
                    // The engine could not start before: try again.
                    self.plugins = PluginsRuntime::start(&new, &self.wiring);
                    return;
                };
                if old.interval != new.interval {
                    plugins.collect_timer = collect_timer(new.interval);
                }
                let changes = plugins.host.reconfigure(new);
                self.apply_plugin_changes(changes);
            }
        }
    }

    /// Moves the admin listener to the address the config wants, beside
    /// the loop: the new address is bound while the old listener still
    /// serves; if it overlaps the old one (the same port on 0.0.0.0 and
    /// 127.0.0.1), the old listener is closed first and the bind waits for
    /// its port. A bind that fails is logged with the reason and the old
    /// listener keeps serving (bound again if it had to close).
    fn rebind_admin(&mut self) {
        if self.admin.rebinding {
            return; // AdminRebound checks `wanted` again
        }
        let Some(listen) = self.admin.wanted else {
            if self.admin.server.take().is_some() {
                info!("admin server stopped (agent.admin removed)");
            }
            return;
        };
        if self
            .admin
            .server
            .as_ref()
            .is_some_and(|s| s.listen == listen)
        {
            return;
        }
        self.admin.rebinding = true;
        let old = self.admin.server.take();
        let sources = admin_sources(&self.wiring, &self.registry.status());
        let tracker = self.wiring.tracker.clone();
        let reply = self.wiring.admin.clone();
        self.wiring.tracker.spawn(async move {
            let server = admin::rebind(old, listen, sources, &tracker).await;
            let _ = reply.send(server).await;
        });
    }

    /// Stop watchers, stop plugins, deregister, all within shutdownTimeout.
    async fn shutdown(self) {
        let timeout = self.config.agent.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        info!(timeout = ?timeout, "shutting down: deregistering every instance");
        self.systemd.stopping();
        drop(self.config_watch);
        drop(self.admin);
        // No API calls once stopping; the socket file goes with it.
        drop(self.api);
        // Dropping the plugins cancels loads under way and stops every
        // plugin task; a compile already running ends on its own thread.
        drop(self.plugins);
        drop(self.inbox);
        let drain = self.config.agent.local.drain_delay;
        // Nothing is registered before start-up ends: nothing to drain.
        let deadline = if drain.is_zero() || self.startup.is_some() {
            deadline
        } else {
            Supervisor::drain_keys(&self.registry, &self.config, deadline, drain).await;
            Instant::now() + timeout
        };
        if !self.registry.stop(deadline).await {
            warn!(
                "deregistration did not finish within shutdownTimeout; the lease will expire on its own"
            );
        }
        let tracker = self.wiring.tracker.clone();
        drop(self.wiring);
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            warn!("some tasks did not stop within shutdownTimeout");
        }
        info!("agent stopped");
    }
}

/// Starts the admin server; a port that cannot be bound is logged and the
/// agent runs without it (registration matters more).
async fn serve_admin(
    listen: SocketAddr,
    sources: admin::Sources,
    tracker: &TaskTracker,
) -> Option<AdminServer> {
    match admin::start(listen, sources, tracker).await {
        Ok(server) => Some(server),
        Err(error) => {
            error!(%listen, %error, "cannot start the admin server; running without it (fix agent.admin.listen and reload)");
            None
        }
    }
}

fn admin_sources(wiring: &Wiring, registry: &watch::Receiver<RegistryStatus>) -> admin::Sources {
    admin::Sources {
        metrics: wiring.metrics.clone(),
        registry: registry.clone(),
        agent: wiring.status_requests.clone(),
    }
}

/// The metric labels of a check: its instance's service and the check.
fn check_label(
    services: &BTreeMap<String, String>,
    id: &CheckId,
    config: &config::CheckConfig,
) -> CheckLabel {
    CheckLabel {
        service: services.get(&id.instance_key).cloned().unwrap_or_default(),
        check: checks::describe(&config.probe),
    }
}

/// Warns about plugin clashes when they change, not on every round.
fn report_clashes(reported: &mut Vec<Clash>, clashes: Vec<Clash>) {
    if clashes != *reported {
        for clash in clashes.iter().filter(|c| !reported.contains(c)) {
            warn!(
                key = %clash.key,
                service = %clash.service,
                metadata_key = %clash.metadata_key,
                winner = %clash.winner,
                loser = %clash.loser,
                "two plugins set the same metadata key; the one whose name sorts first wins"
            );
        }
        *reported = clashes;
    }
}

fn min_rewrite_interval(config: &Config) -> Option<Duration> {
    config.agent.plugins.as_ref()?.min_rewrite_interval
}

fn collect_timer(interval: Duration) -> Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// A round's input: a fresh system snapshot and the configured instances.
fn round(config: &Config) -> Round {
    let instances = config
        .agent
        .instances
        .iter()
        .map(|instance| PluginInstance {
            key: record::registry_key(&config.registry.prefix, instance),
            instance: instance.clone(),
        })
        .collect();
    Round {
        system: Arc::new(plugins::system::read()),
        instances: Arc::new(instances),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_signals_is_debounced_but_never_for_long() {
        let mut debounce = Debounce::default();
        let start = Instant::now();
        debounce.touch(CONFIG_DEBOUNCE);
        assert_eq!(debounce.due, Some(start + CONFIG_DEBOUNCE));
        // A signal every 50 ms keeps pushing it back by the quiet time...
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(50)).await;
            debounce.touch(CONFIG_DEBOUNCE);
        }
        assert_eq!(
            debounce.due,
            Some(start + Duration::from_millis(500) + CONFIG_DEBOUNCE)
        );
        // ...but never past MAX_DEBOUNCE after the first.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(50)).await;
            debounce.touch(CONFIG_DEBOUNCE);
        }
        assert_eq!(debounce.due, Some(start + MAX_DEBOUNCE));
        debounce.take();
        assert_eq!(debounce.due, None);
        debounce.touch(CONFIG_DEBOUNCE);
        assert_eq!(debounce.due, Some(Instant::now() + CONFIG_DEBOUNCE));
    }

    #[tokio::test(start_paused = true)]
    async fn start_up_waits_for_loads_then_the_first_round_and_no_longer() {
        let start = Instant::now();
        let mut startup = Startup::new(start);
        assert_eq!(startup.step(start, false), StartupStep::Wait);
        assert_eq!(startup.deadline(), start + STARTUP_LOAD_WAIT);
        // Loads done early: the first round goes out at once.
        assert_eq!(startup.step(start, true), StartupStep::FirstRound);
        // A load that takes longer than the wait does not hold registration.
        let late = start + STARTUP_LOAD_WAIT;
        assert_eq!(startup.step(late, false), StartupStep::FirstRound);

        let timeout = Duration::from_secs(1);
        startup.round_sent(start, 2, timeout);
        assert!(!startup.waiting_for_loads());
        assert_eq!(startup.deadline(), start + timeout + FIRST_ROUND_SLACK);
        assert_eq!(startup.step(start, true), StartupStep::Wait);
        startup.answered();
        assert_eq!(startup.step(start, true), StartupStep::Wait);
        startup.answered();
        assert_eq!(startup.step(start, true), StartupStep::Register);

        // A plugin that never answers holds registration for one call's
        // timeout (plus the slack), no longer.
        let mut startup = Startup::new(start);
        startup.round_sent(start, 1, timeout);
        let just_before = start + timeout + FIRST_ROUND_SLACK - Duration::from_millis(1);
        assert_eq!(startup.step(just_before, true), StartupStep::Wait);
        assert_eq!(
            startup.step(start + timeout + FIRST_ROUND_SLACK, true),
            StartupStep::Register
        );
    }

    const CONFIG: &str = "yggdrasil:
  registry:
    config:
      client:
        endpoints: [\"127.0.0.1:9\"]
      ttl: 4s
agent:
  instances:
    - name: svc
      version: 1.0.0
      endpoints: [{scheme: grpc, address: \"127.0.0.1:1\"}]
";

    /// A supervisor on `path`, as `run` starts it (its registry points at a
    /// closed port and retries in the background).
    async fn supervisor(path: &Path) -> (Supervisor, mpsc::Sender<Control>) {
        let loaded = config::load(path).expect("valid");
        let (control_tx, control_rx) = mpsc::channel(1);
        let options = RunOptions {
            config_path: path.to_path_buf(),
            config_digest: loaded.digest,
            metrics: Metrics::new(),
        };
        let supervisor = Supervisor::start(options, loaded.config, control_rx).await;
        (supervisor, control_tx)
    }

    async fn reload(supervisor: &mut Supervisor, forced: bool) -> ReloadOutcome {
        let path = supervisor.config_path.clone();
        supervisor.reading.running = true;
        let read = tokio::task::spawn_blocking(move || read_config(&path, forced))
            .await
            .unwrap();
        supervisor.apply_read(read)
    }

    #[tokio::test]
    async fn reload_applies_valid_changes_and_refuses_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let (mut supervisor, _control) = supervisor(&path).await;
        assert!(
            supervisor.startup.is_none(),
            "no plugins: registers at once"
        );

        // The bytes it started from: nothing to do, even after a touch.
        assert_eq!(
            reload(&mut supervisor, false).await,
            ReloadOutcome::Unchanged
        );
        // A comment changes the bytes, not the config.
        std::fs::write(&path, format!("# note\n{CONFIG}")).unwrap();
        assert_eq!(
            reload(&mut supervisor, false).await,
            ReloadOutcome::Unchanged
        );

        std::fs::write(&path, CONFIG.replace("ttl: 4s", "ttl: 6s")).unwrap();
        assert_eq!(reload(&mut supervisor, false).await, ReloadOutcome::Applied);
        assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(6));

        // Invalid: refused with the error and its line; the config stays.
        std::fs::write(&path, CONFIG.replace("ttl: 4s", "ttl: soon")).unwrap();
        match reload(&mut supervisor, false).await {
            ReloadOutcome::Refused(problems) => {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert!(
                    problems[0].contains("ttl") && problems[0].contains("line 6"),
                    "{problems:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(6));

        // Gone: refused, config kept; back: applied.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            reload(&mut supervisor, false).await,
            ReloadOutcome::Refused(_)
        ));
        std::fs::write(&path, CONFIG).unwrap();
        assert_eq!(reload(&mut supervisor, false).await, ReloadOutcome::Applied);
        assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(4));

        // SIGHUP re-reads the same bytes; a config equal to the running one
        // is still "unchanged".
        assert_eq!(
            reload(&mut supervisor, true).await,
            ReloadOutcome::Unchanged
        );

        let reloads = supervisor.wiring.metrics.render();
        assert!(
            reloads.contains("ygg_agent_config_reloads_total{result=\"error\"} 2"),
            "{reloads}"
        );
        supervisor.shutdown().await;
    }

    /// Handles events until a config read arrives, and returns it.
    async fn next_read(supervisor: &mut Supervisor) -> Box<ConfigRead> {
        loop {
            match supervisor.next_event().await {
                Some(Event::ConfigRead(read)) => return read,
                Some(other) => assert!(supervisor.handle(other)),
                None => panic!("the supervisor's inbox closed"),
            }
        }
    }

    #[tokio::test]
    async fn a_read_asked_for_during_a_read_runs_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let (mut supervisor, _control) = supervisor(&path).await;
        supervisor.read_config(false);
        supervisor.read_config(true);
        assert_eq!(supervisor.reading.again, Some(true));
        let first = next_read(&mut supervisor).await;
        assert!(!first.forced);
        assert!(supervisor.handle(Event::ConfigRead(first)));
        // The forced one follows on its own.
        let second = next_read(&mut supervisor).await;
        assert!(second.forced);
        supervisor.shutdown().await;
    }
}
