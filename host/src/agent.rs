//! The supervisor: owns the running config and the plugin host, turns both
//! into the registry's target, and runs the shutdown sequence. Everything
//! that happens to the agent arrives as one [`Event`] through one `select!`:
//! control requests (signals), watcher signals, plugin results and timers.
//! The actors it starts run on its [`TaskTracker`].
//!
//! Reload follows one path whatever triggered it (SIGHUP, an edit, a
//! rename, a ConfigMap swap): re-read, validate, and either apply the
//! difference or keep the running config and count the failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminServer};
use crate::config::{self, AdminConfig, Config, PluginsConfig};
use crate::desired::{self, Clash, PluginMetadata, Target};
use crate::metrics::{self, Metrics};
use crate::plugins::{self, PluginHost, PluginInstance, Round, RoundResult};
use crate::record;
use crate::registry::{RegistryHandle, RegistryStatus};
use crate::systemd::Notifier;
use crate::watch::FolderWatch;

/// Quiet time after the last change signal before the config is re-read.
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet time after the last change in the plugins folder before a rescan.
const PLUGINS_DEBOUNCE: Duration = Duration::from_millis(200);
/// A stream of signals cannot postpone a reload or rescan longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Round results in flight from plugin tasks to the supervisor.
const PLUGIN_RESULTS_CAPACITY: usize = 64;
/// Results of one round arrive within microseconds of each other: waiting
/// this long after the first turns them into one write instead of one per
/// plugin.
const RESULTS_COALESCE: Duration = Duration::from_millis(20);

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
    /// Something changed in the config file's folder.
    ConfigTouched,
    /// The debounce delay after `ConfigTouched` passed.
    ConfigSettled,
    PluginsTouched,
    PluginsSettled,
    CollectTick,
    PluginResult(RoundResult),
    /// Plugin results have settled: publish the new target.
    ResultsSettled,
    /// The registry's status changed (readiness, counts, connection).
    RegistryStatus(RegistryStatus),
    WatchdogTick,
}

/// What `run` needs besides the config it starts with.
pub struct RunOptions {
    /// The file to watch and re-read.
    pub config_path: PathBuf,
    pub metrics: Metrics,
}

/// Debounces a burst of signals into one action.
#[derive(Default)]
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

struct Supervisor {
    config_path: PathBuf,
    config: Config,
    /// What the last read of the config file found: the SHA-256 of its
    /// bytes (good or bad config), or why it could not be read. A watcher
    /// signal that changes neither costs one read and nothing else.
    last_read: Result<[u8; 32], String>,
    metrics: Metrics,
    tracker: TaskTracker,
    registry: RegistryHandle,
    plugins: Option<PluginHost>,
    plugin_metadata: PluginMetadata,
    plugin_results: mpsc::Sender<RoundResult>,
    plugins_watch: Option<FolderWatch>,
    plugins_signals: mpsc::Sender<()>,
    collect_timer: Option<Interval>,
    /// When merged plugin results are due to be published.
    publish_due: Option<Instant>,
    clashes: Vec<Clash>,
    admin: Option<AdminServer>,
    systemd: Notifier,
    _config_watch: Option<FolderWatch>,
}

/// Runs the agent until `control` says stop (or closes), then deregisters
/// within the config's `shutdownTimeout`.
pub async fn run(options: RunOptions, config: Config, mut control: mpsc::Receiver<Control>) {
    let tracker = TaskTracker::new();
    let (results_tx, mut results_rx) = mpsc::channel(PLUGIN_RESULTS_CAPACITY);
    let (config_signals_tx, mut config_signals) = mpsc::channel(1);
    let (plugins_signals_tx, mut plugins_signals) = mpsc::channel(1);

    let config_dir = options
        .config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config_watch = watch_folder(&config_dir, &config_signals_tx, "reload with SIGHUP");
    let last_read = std::fs::read(&options.config_path)
        .map(|bytes| Sha256::digest(&bytes).into())
        .map_err(|e| e.to_string());

    // Plugins load before the first registration, so the first record
    // already carries their metadata.
    let mut plugin_metadata = PluginMetadata::new();
    let mut plugins = None;
    let mut plugins_watch = None;
    if let Some(plugins_config) = &config.agent.plugins {
        let (host, watch) = start_plugins(
            plugins_config,
            &results_tx,
            &plugins_signals_tx,
            &options.metrics,
            &tracker,
        )
        .await;
        if let Some(mut host) = host {
            first_round(&mut host, &config, &mut results_rx, &mut plugin_metadata).await;
            plugins = Some(host);
        }
        plugins_watch = watch;
    }

    let (target, clashes) = desired::build(&config, &plugin_metadata);
    let registry = RegistryHandle::spawn(target, options.metrics.clone(), &tracker);
    info!(
        instances = config.agent.instances.len(),
        plugins = plugins.as_ref().map_or(0, |p: &PluginHost| p.loaded().len()),
        endpoints = ?config.registry.client.endpoints,
        prefix = %config.registry.prefix,
        "agent started"
    );
    let collect_timer = config
        .agent
        .plugins
        .as_ref()
        .map(|p| collect_timer(p.interval));
    let mut registry_status = registry.status();
    let admin = start_admin(
        config.agent.admin.as_ref(),
        &options.metrics,
        &registry_status,
        &tracker,
    )
    .await;
    let systemd = Notifier::from_env();
    let mut watchdog = systemd.watchdog_every.map(|every| {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    let mut supervisor = Supervisor {
        config_path: options.config_path,
        config,
        last_read,
        metrics: options.metrics,
        tracker: tracker.clone(),
        registry,
        plugins,
        plugin_metadata,
        plugin_results: results_tx,
        plugins_watch,
        plugins_signals: plugins_signals_tx,
        collect_timer,
        publish_due: None,
        clashes: Vec::new(),
        admin,
        systemd,
        _config_watch: config_watch,
    };
    supervisor.report_clashes(clashes);

    let mut config_debounce = Debounce::default();
    let mut plugins_debounce = Debounce::default();
    loop {
        let event = tokio::select! {
            message = control.recv() => match message {
                Some(control) => Event::Control(control),
                None => Event::ControlClosed,
            },
            Some(()) = config_signals.recv() => Event::ConfigTouched,
            Some(()) = plugins_signals.recv() => Event::PluginsTouched,
            Some(result) = results_rx.recv() => Event::PluginResult(result),
            () = sleep_until(config_debounce.due.unwrap_or_else(Instant::now)), if config_debounce.due.is_some() => Event::ConfigSettled,
            () = sleep_until(plugins_debounce.due.unwrap_or_else(Instant::now)), if plugins_debounce.due.is_some() => Event::PluginsSettled,
            _ = async { supervisor.collect_timer.as_mut().expect("guarded").tick().await }, if supervisor.collect_timer.is_some() => Event::CollectTick,
            () = sleep_until(supervisor.publish_due.unwrap_or_else(Instant::now)), if supervisor.publish_due.is_some() => Event::ResultsSettled,
            Ok(()) = registry_status.changed() => Event::RegistryStatus(registry_status.borrow_and_update().clone()),
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => Event::WatchdogTick,
        };
        match event {
            Event::Control(Control::Shutdown) | Event::ControlClosed => break,
            Event::Control(Control::Reload) => {
                // SIGHUP re-reads everything: the fallback where file
                // events do not arrive (network file systems).
                config_debounce.take();
                plugins_debounce.take();
                supervisor.reload(true).await;
                supervisor.rescan_plugins().await;
            }
            Event::ConfigTouched => config_debounce.touch(CONFIG_DEBOUNCE),
            Event::ConfigSettled => {
                config_debounce.take();
                supervisor.reload(false).await;
            }
            Event::PluginsTouched => plugins_debounce.touch(PLUGINS_DEBOUNCE),
            Event::PluginsSettled => {
                plugins_debounce.take();
                supervisor.rescan_plugins().await;
            }
            Event::CollectTick => supervisor.start_round(None),
            Event::PluginResult(result) => supervisor.take_result(result),
            Event::ResultsSettled => {
                supervisor.publish_due = None;
                supervisor.publish();
            }
            Event::RegistryStatus(status) => supervisor.systemd.registry(&status),
            Event::WatchdogTick => supervisor.systemd.watchdog(),
        }
    }
    drop(results_rx);
    supervisor.shutdown().await;
}

/// Starts the admin server when configured; a port that cannot be bound is
/// logged and the agent runs without it (registration matters more).
async fn start_admin(
    config: Option<&AdminConfig>,
    metrics: &Metrics,
    status: &tokio::sync::watch::Receiver<RegistryStatus>,
    tracker: &TaskTracker,
) -> Option<AdminServer> {
    let listen = config?.listen;
    match admin::start(listen, metrics.clone(), status.clone(), tracker).await {
        Ok(server) => Some(server),
        Err(error) => {
            error!(%listen, %error, "cannot start the admin server; running without it (fix agent.admin.listen and reload)");
            None
        }
    }
}

/// Watches `dir`; when that fails the agent runs on, and says what the
/// operator can do instead.
fn watch_folder(dir: &Path, signals: &mpsc::Sender<()>, instead: &str) -> Option<FolderWatch> {
    match FolderWatch::new(dir, signals.clone()) {
        Ok(watch) => Some(watch),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "cannot watch this folder; {instead}");
            None
        }
    }
}

fn collect_timer(interval: Duration) -> Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Creates the plugin host, watches its folder and loads what is there.
async fn start_plugins(
    config: &PluginsConfig,
    results: &mpsc::Sender<RoundResult>,
    signals: &mpsc::Sender<()>,
    metrics: &Metrics,
    tracker: &TaskTracker,
) -> (Option<PluginHost>, Option<FolderWatch>) {
    let watch = watch_folder(&config.dir, signals, "changes apply on SIGHUP");
    match PluginHost::new(
        config.clone(),
        results.clone(),
        metrics.clone(),
        tracker.clone(),
    ) {
        Ok(mut host) => {
            host.rescan(Arc::new(plugins::system::read())).await;
            (Some(host), watch)
        }
        Err(error) => {
            error!(%error, "cannot start the WebAssembly engine; running without plugins");
            (None, watch)
        }
    }
}

/// The round every loaded plugin runs before the first registration. It
/// waits at most one call's `timeout` (plus a little), whatever the number of
/// instances: registration never waits long on plugins; late answers are
/// written when they come.
async fn first_round(
    host: &mut PluginHost,
    config: &Config,
    results: &mut mpsc::Receiver<RoundResult>,
    metadata: &mut PluginMetadata,
) {
    let expected = host.loaded().len();
    if expected == 0 || config.agent.instances.is_empty() {
        return;
    }
    host.start_round(&round(config), None);
    let deadline = Instant::now() + host.config().timeout + Duration::from_millis(100);
    let mut seen = 0;
    while seen < expected {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(result)) => {
                seen += 1;
                if host.is_current(&result) {
                    merge_result(metadata, result);
                }
            }
            _ => break,
        }
    }
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

/// Keeps the outputs that succeeded; failed calls leave the last good output.
fn merge_result(metadata: &mut PluginMetadata, result: RoundResult) {
    let per_instance = metadata.entry(result.plugin.to_string()).or_default();
    for (key, output) in result.outputs {
        per_instance.insert(key, output);
    }
}

impl Supervisor {
    fn publish(&mut self) {
        let (target, clashes) = desired::build(&self.config, &self.plugin_metadata);
        self.registry.set_target(target);
        self.report_clashes(clashes);
    }

    /// Warns about plugin clashes when they change, not on every round.
    fn report_clashes(&mut self, clashes: Vec<Clash>) {
        if clashes != self.clashes {
            for clash in clashes.iter().filter(|c| !self.clashes.contains(c)) {
                warn!(
                    key = %clash.key,
                    winner = %clash.winner,
                    loser = %clash.loser,
                    "two plugins set the same metadata key; the one whose name sorts first wins"
                );
            }
            self.clashes = clashes;
        }
    }

    fn start_round(&mut self, only: Option<&[String]>) {
        if self.config.agent.instances.is_empty() {
            return;
        }
        if let Some(host) = self.plugins.as_mut() {
            host.start_round(&round(&self.config), only);
        }
    }

    fn take_result(&mut self, result: RoundResult) {
        let current = self
            .plugins
            .as_ref()
            .is_some_and(|host| host.is_current(&result));
        if current {
            merge_result(&mut self.plugin_metadata, result);
            self.publish_due
                .get_or_insert_with(|| Instant::now() + RESULTS_COALESCE);
        }
    }

    async fn rescan_plugins(&mut self) {
        let Some(host) = self.plugins.as_mut() else {
            return;
        };
        let changes = host.rescan(Arc::new(plugins::system::read())).await;
        self.apply_plugin_changes(changes);
    }

    fn apply_plugin_changes(&mut self, changes: plugins::Changes) {
        let mut changed = false;
        for name in &changes.stopped {
            changed |= self.plugin_metadata.remove(name).is_some();
        }
        if changed {
            self.publish();
        }
        if !changes.started.is_empty() {
            // Old output of a replaced plugin stays until the new one answers.
            self.start_round(Some(&changes.started));
        }
    }

    /// Re-reads the config file. `forced` (SIGHUP) re-reads even when the
    /// bytes did not change.
    async fn reload(&mut self, forced: bool) {
        let path = self.config_path.clone();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                // Deleted, replaced by a folder, unreadable: keep running on
                // what we have; the next good save applies normally.
                let error = error.to_string();
                if forced || self.last_read.as_ref().err() != Some(&error) {
                    self.reload_failed(&[format!(
                        "cannot read config file {}: {error}",
                        path.display()
                    )]);
                }
                self.last_read = Err(error);
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if !forced && self.last_read == Ok(digest) {
            return;
        }
        self.last_read = Ok(digest);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                self.reload_failed(&[format!("{} is not UTF-8 text", path.display())]);
                return;
            }
        };
        let base = config::base_dir(&path);
        let loaded = match config::parse(&text, &base) {
            Ok(loaded) => loaded,
            Err(issues) => {
                let lines: Vec<String> = issues.iter().map(ToString::to_string).collect();
                self.reload_failed(&lines);
                return;
            }
        };
        for warning in &loaded.warnings {
            warn!(%warning, "config warning");
        }
        self.metrics
            .config_reloads
            .get_or_create(&metrics::OK)
            .inc();
        if loaded.config == self.config {
            info!(path = %path.display(), "config reloaded: no change");
            return;
        }
        self.apply(loaded.config).await;
    }

    /// Logs a failed reload: one line saying so, then one line per problem.
    fn reload_failed(&mut self, problems: &[String]) {
        self.metrics
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
    async fn apply(&mut self, new: Config) {
        let old_target: Target = desired::build(&self.config, &self.plugin_metadata).0;
        let plugins_changed = new.agent.plugins != self.config.agent.plugins;
        let admin_changed = new.agent.admin != self.config.agent.admin;
        let registry_changed = new.registry != self.config.registry;
        let instances_changed = new.agent.instances != self.config.agent.instances;
        let old_plugins = self.config.agent.plugins.clone();
        self.config = new;

        // Plugin metadata of instances that no longer exist is dropped.
        let (new_target, _) = desired::build(&self.config, &self.plugin_metadata);
        let keys: BTreeSet<&String> = new_target.records.keys().collect();
        for per_instance in self.plugin_metadata.values_mut() {
            per_instance.retain(|key, _| keys.contains(key));
        }
        let added = keys
            .iter()
            .filter(|k| !old_target.records.contains_key(**k))
            .count();
        let removed = old_target
            .records
            .keys()
            .filter(|k| !keys.contains(k))
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
            self.apply_plugins_config(old_plugins).await;
        }
        if admin_changed {
            // The old server must release its port before a new one binds it.
            self.admin = None;
            self.admin = start_admin(
                self.config.agent.admin.as_ref(),
                &self.metrics,
                &self.registry.status(),
                &self.tracker,
            )
            .await;
        }
        self.publish();
        if instances_changed || registry_changed {
            // New or moved instances get their plugin metadata right away.
            self.start_round(None);
        }
    }

    async fn apply_plugins_config(&mut self, old: Option<PluginsConfig>) {
        match (old, self.config.agent.plugins.clone()) {
            (_, None) => {
                if self.plugins.take().is_some() {
                    info!("plugins turned off; unloading them");
                }
                self.plugins_watch = None;
                self.collect_timer = None;
                self.plugin_metadata.clear();
                self.metrics.plugins_loaded.set(0);
            }
            (None, Some(new)) => {
                let (host, watch) = start_plugins(
                    &new,
                    &self.plugin_results,
                    &self.plugins_signals,
                    &self.metrics,
                    &self.tracker,
                )
                .await;
                self.plugins = host;
                self.plugins_watch = watch;
                self.collect_timer = Some(collect_timer(new.interval));
                self.start_round(None);
            }
            (Some(old), Some(new)) => {
                if old.dir != new.dir {
                    self.plugins_watch =
                        watch_folder(&new.dir, &self.plugins_signals, "changes apply on SIGHUP");
                }
                if old.interval != new.interval {
                    self.collect_timer = Some(collect_timer(new.interval));
                }
                if let Some(host) = self.plugins.as_mut() {
                    let changes = host
                        .reconfigure(new, Arc::new(plugins::system::read()))
                        .await;
                    self.apply_plugin_changes(changes);
                }
            }
        }
    }

    /// Stop watchers, stop plugins, deregister, all within shutdownTimeout.
    async fn shutdown(self) {
        let timeout = self.config.agent.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        info!(timeout = ?timeout, "shutting down: deregistering every instance");
        self.systemd.stopping();
        drop(self._config_watch);
        drop(self.admin);
        drop(self.plugins_watch);
        drop(self.plugins);
        drop(self.plugin_results);
        if !self.registry.stop(deadline).await {
            warn!(
                "deregistration did not finish within shutdownTimeout; the lease will expire on its own"
            );
        }
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some tasks did not stop within shutdownTimeout");
        }
        info!("agent stopped");
    }
}
