//! WebAssembly metadata plugins: the plugins folder, loading, reloading and
//! unloading, and collection rounds. The supervisor owns the [`PluginHost`];
//! scans and loads run beside it and come back as messages, each loaded
//! plugin runs in its own task (see [`runner`]) and sends its round results
//! back over a channel the supervisor reads.
//!
//! Nothing here knows about etcd: plugin output goes to the supervisor,
//! which merges it into the desired state.

mod background;
mod cache;
mod check;
pub mod compile_child;
mod engine;
mod folder;
mod inspect;
mod instance;
mod load;
pub mod output;
mod ownership;
mod runner;
mod signature;
mod state;
mod stdio;
pub mod system;
mod ticker;
mod v0_1_0;
mod v0_2_0;
mod wit_host;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::PluginsConfig;
use crate::metrics::{Metrics, PluginLabel, PluginResultLabel};
use crate::status::PluginStatus;

pub use check::{CheckPlugin, CheckPlugins, CheckTarget, MAX_CHECK_OUTPUT};
pub use engine::{LoadError, PluginEngine, default_cache_dir};
pub use folder::Scan;
pub use inspect::{FileReport, check_file, load_check_plugin};
pub use instance::PluginInstance;
use load::{FailedLoad, Load, LoadInputs, ReadyKind, TrustInputs};
pub use load::{LoadOutcome, Ready};
pub use runner::{CallError, Limits, PluginInfo, Round, RoundResult, wears_out};

/// A plugin that is loaded and running.
struct Loaded {
    inputs: LoadInputs,
    info: PluginInfo,
    generation: u64,
    handle: runner::RunnerHandle,
    next_due: Instant,
}

/// A check plugin that is loaded (published in [`CheckPlugins`]).
struct LoadedCheck {
    inputs: LoadInputs,
    plugin: Arc<CheckPlugin>,
}

/// A load under way beside the supervisor's loop. Dropping it (a newer
/// load of the same plugin, its file gone, the host dropped) cancels the
/// load's task; a compile already running finishes on its blocking thread
/// and its result is thrown away.
struct Pending {
    id: u64,
    inputs: LoadInputs,
    _cancel: DropGuard,
}

/// What a scan or a finished load changed, for the supervisor to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Newly loaded or replaced: collect from them now.
    pub started: Vec<String>,
    /// Gone: their metadata must be removed from the instances.
    pub stopped: Vec<String>,
}

/// Where the host sends what it does beside the supervisor's loop; the
/// supervisor's inbox holds the receivers.
#[derive(Clone)]
pub struct Outbox {
    pub results: mpsc::Sender<RoundResult>,
    pub loads: mpsc::Sender<LoadOutcome>,
    /// The loaded check plugins, for the health checks (read with
    /// `borrow`; the host replaces the map whenever one loads or goes).
    pub check_plugins: watch::Sender<CheckPlugins>,
}

/// The plugins of one agent. Every method returns at once: the caller
/// runs scans ([`PluginHost::scan_job`]) beside itself and hands each
/// [`Scan`] to [`PluginHost::apply_scan`]; loads run beside the caller and
/// come back through the [`Outbox`] as a [`LoadOutcome`] (hand it to
/// [`PluginHost::finish_load`]).
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    config: PluginsConfig,
    loaded: BTreeMap<String, Loaded>,
    /// Check plugins, by name (a name is in `loaded` or here, not both).
    checks: BTreeMap<String, LoadedCheck>,
    pending: HashMap<String, Pending>,
    /// Plugins refused by their signature, by name, with why (for status
    /// and `plugins_untrusted`).
    untrusted: BTreeMap<String, String>,
    /// Files that failed to load, by name, with what they were loaded with:
    /// not retried until the bytes, settings or limits change.
    failed: HashMap<String, LoadInputs>,
    /// Each plugin file's digest and stamp from the last scan.
    known: HashMap<String, ([u8; 32], folder::Stamp)>,
    /// Problems already reported (unreadable files, the folder, names that
    /// are not plugin names) with their message, so a folder full of junk
    /// is reported once, not on every event. Pruned on every scan.
    warned: HashMap<PathBuf, String>,
    outbox: Outbox,
    metrics: Metrics,
    tracker: TaskTracker,
    /// Cancels every scan, load and plugin task when the host is dropped
    /// or its parent (the agent's plugins token) is cancelled.
    cancel: CancellationToken,
    /// Limits of the compile child of every cold compile.
    child_limits: compile_child::ChildLimits,
    next_id: u64,
    /// What each plugin did since it was loaded, for the status (entries
    /// of plugins in neither `loaded`, `checks` nor `failed` are ignored).
    activity: HashMap<String, Activity>,
}

/// One plugin's record for the status: when it was loaded, its calls.
#[derive(Debug, Clone, Default)]
struct Activity {
    loaded_at: Option<SystemTime>,
    last_call: Option<SystemTime>,
    calls: u64,
    errors: u64,
    last_error: Option<String>,
    memory: Option<u64>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.metrics.plugins_loaded.set(0);
        for name in self.loaded.keys() {
            forget_metrics(&self.metrics, name);
        }
        if !self.checks.is_empty() {
            self.outbox
                .check_plugins
                .send_replace(CheckPlugins::default());
        }
    }
}

impl PluginHost {
    /// Creates the engine. Nothing is loaded until the first [`scan`].
    /// Cancelling `stop` stops every task of the host (scans, loads,
    /// plugin runners).
    ///
    /// [`scan`]: PluginHost::scan
    pub fn new(
        config: PluginsConfig,
        outbox: Outbox,
        metrics: Metrics,
        tracker: TaskTracker,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let engine = Arc::new(PluginEngine::new(Some(cache_dir))?);
        Ok(PluginHost {
            engine,
            config,
            loaded: BTreeMap::new(),
            checks: BTreeMap::new(),
            pending: HashMap::new(),
            untrusted: BTreeMap::new(),
            failed: HashMap::new(),
            known: HashMap::new(),
            warned: HashMap::new(),
            outbox,
            metrics,
            tracker,
            cancel: stop.child_token(),
            child_limits: compile_child::ChildLimits::from_env(),
            next_id: 0,
            activity: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn config(&self) -> &PluginsConfig {
        &self.config
    }

    /// Names of the loaded plugins, sorted.
    pub fn loaded(&self) -> Vec<String> {
        self.loaded.keys().cloned().collect()
    }

    /// Plugins refused by their signature (`agent.plugins.trustedKeys`),
    /// with why.
    pub fn untrusted(&self) -> &BTreeMap<String, String> {
        &self.untrusted
    }

    /// Publishes the check plugins as they are now.
    fn publish_checks(&self) {
        let map: BTreeMap<String, Arc<CheckPlugin>> = self
            .checks
            .iter()
            .map(|(name, loaded)| (name.clone(), loaded.plugin.clone()))
            .collect();
        self.outbox.check_plugins.send_replace(Arc::new(map));
    }

    /// No load is under way.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes a new `agent.plugins` config: another folder unloads
    /// everything; other settings or limits reload what they change once
    /// the next scan comes back (the caller starts it). Returns the
    /// plugins stopped now.
    pub fn reconfigure(&mut self, config: PluginsConfig) -> Changes {
        let mut changes = Changes::default();
        if config.dir != self.config.dir {
            for name in std::mem::take(&mut self.loaded).into_keys() {
                forget_metrics(&self.metrics, &name);
                changes.stopped.push(name);
            }
            if !std::mem::take(&mut self.checks).is_empty() {
                self.publish_checks();
            }
            self.pending.clear();
            self.failed.clear();
            self.known.clear();
            self.warned.clear();
        }
        self.config = config;
        self.metrics
            .plugins_loaded
            .set((self.loaded.len() + self.checks.len()) as i64);
        changes
    }

    /// A scan of the folder as it is now, to run on a blocking thread; its
    /// [`Scan`] goes to [`PluginHost::apply_scan`].
    pub fn scan_job(&self) -> impl FnOnce() -> Scan + Send + 'static {
        let dir = self.config.dir.clone();
        let known = self.known.clone();
        move || folder::scan(&dir, &known)
    }

    /// Compares a scan with what is loaded: unloads plugins whose file is
    /// gone (returned in `stopped`), and starts a load for every file whose
    /// bytes, settings or limits changed. The old version of a plugin keeps
    /// serving until its new version is ready.
    pub fn apply_scan(&mut self, scan: Scan) -> Changes {
        let mut changes = Changes::default();
        if scan.dir != self.config.dir {
            // A scan of the folder before a reconfigure: stale.
            return changes;
        }
        // An unreadable folder changes nothing: plugins are unloaded when
        // their files go, not when a read fails.
        let files = match scan.files {
            Ok(files) => {
                self.warned.remove(&self.config.dir);
                self.metrics.plugins_folder_refused.set(0);
                files
            }
            Err(folder::FolderError::Unreadable(message)) => {
                let dir = self.config.dir.clone();
                self.warn_once(&dir, &message, || {
                    warn!(dir = %dir.display(), error = %message, "cannot read the plugins folder");
                });
                return changes;
            }
            // Refused: nothing new loads from it; what runs was loaded
            // while it passed, and keeps running until its file goes.
            Err(folder::FolderError::Refused(message)) => {
                let dir = self.config.dir.clone();
                self.warn_once(&dir, &message, || {
                    error!(dir = %dir.display(), problem = %message, "plugins folder refused: another user could have written it or a plugin in it, so nothing in it loads");
                });
                self.metrics.plugins_folder_refused.set(1);
                return changes;
            }
        };
        // Problems are reported once while they last, and forgotten when
        // their file goes or is fixed.
        let dir = self.config.dir.clone();
        self.warned.retain(|path, _| {
            *path == dir
                || scan.ignored.contains(path)
                || files.values().any(|f| f.path == *path && f.digest.is_err())
        });
        for path in &scan.ignored {
            self.warn_once(path, "", || {
                warn!(file = %path.display(), "ignoring a .wasm file whose name is not a plugin name (letters, digits, `_`, `-`, `.`)");
            });
        }
        let gone: Vec<String> = self
            .loaded
            .keys()
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.loaded.remove(&name);
            forget_metrics(&self.metrics, &name);
            info!(plugin = %name, "plugin unloaded (its file is gone)");
            changes.stopped.push(name);
        }
        let checks_before = self.checks.len();
        self.checks.retain(|name, _| {
            let keep = files.contains_key(name);
            if !keep {
                info!(plugin = %name, "check plugin unloaded (its file is gone)");
            }
            keep
        });
        if self.checks.len() != checks_before {
            self.publish_checks();
        }
        self.failed.retain(|name, _| files.contains_key(name));
        self.untrusted.retain(|name, _| files.contains_key(name));
        self.pending.retain(|name, _| files.contains_key(name));
        self.known.clear();
        for (name, file) in files {
            match file.digest {
                Ok((digest, stamp)) => {
                    self.known.insert(name.clone(), (digest, stamp));
                    self.load_if_changed(&name, file.path, digest, file.signature);
                }
                Err(error) => {
                    let message = error.to_string();
                    self.warn_once(&file.path, &message, || {
                        report_failure(&name, &file.path, &message)
                    });
                }
            }
        }
        self.metrics
            .plugins_loaded
            .set((self.loaded.len() + self.checks.len()) as i64);
        changes
    }

    fn warn_once(&mut self, path: &Path, message: &str, report: impl FnOnce()) {
        if self.warned.get(path).map(String::as_str) != Some(message) {
            report();
            self.warned.insert(path.to_path_buf(), message.to_string());
        }
    }

    /// Starts loading `path` as plugin `name` unless the same bytes with the
    /// same settings and limits are already loaded, loading, or failed.
    fn load_if_changed(
        &mut self,
        name: &str,
        path: PathBuf,
        digest: [u8; 32],
        signature: Option<[u8; 32]>,
    ) {
        let keys = trusted_keys(&self.config);
        let inputs = LoadInputs {
            digest,
            settings: settings_for(Some(&self.config), name),
            limits: Limits::of(Some(&self.config)),
            trust: (!keys.is_empty()).then(|| TrustInputs {
                keys: keys.to_vec(),
                signature,
            }),
        };
        let running = self.loaded.get(name).map(|l| &l.inputs);
        let running = running.or(self.checks.get(name).map(|c| &c.inputs));
        let unchanged = running == Some(&inputs)
            || self.pending.get(name).is_some_and(|p| p.inputs == inputs)
            || self.failed.get(name) == Some(&inputs);
        if unchanged {
            // A load of older inputs that is still running is superseded.
            if running == Some(&inputs) {
                self.pending.remove(name);
            }
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        let cancel = self.cancel.child_token();
        let task = Load {
            engine: self.engine.clone(),
            name: name.to_string(),
            path,
            inputs: inputs.clone(),
            child_limits: self.child_limits,
        };
        info!(plugin = %name, file = %task.path.display(), "loading plugin");
        let loads = self.outbox.loads.clone();
        let stop = cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                outcome = task.run(id) => {
                    let _ = loads.send(outcome).await;
                }
            }
        });
        // Replacing an older pending load drops its guard: it is cancelled.
        self.pending.insert(
            name.to_string(),
            Pending {
                id,
                inputs,
                _cancel: cancel.drop_guard(),
            },
        );
    }

    /// Takes the end of a load. A stale outcome (a newer load was asked
    /// for, or the file is gone) changes nothing; a plugin that is ready
    /// replaces the running version, which stops; a failure leaves the
    /// running version serving.
    pub fn finish_load(&mut self, outcome: LoadOutcome) -> Changes {
        let mut changes = Changes::default();
        if self.pending.get(&outcome.name).map(|p| p.id) != Some(outcome.id) {
            return changes;
        }
        self.pending.remove(&outcome.name);
        let name = outcome.name;
        let replacing = self.loaded.contains_key(&name) || self.checks.contains_key(&name);
        match outcome.result {
            Ok(ready) => {
                self.metrics
                    .plugin_loads
                    .get_or_create(&crate::metrics::OK)
                    .inc();
                self.untrusted.remove(&name);
                let Ready {
                    inputs,
                    kind,
                    from_cache,
                    compile_time,
                } = *ready;
                tracing::debug!(plugin = %name, from_cache, compile = ?compile_time, "plugin compiled");
                self.failed.remove(&name);
                self.activity.insert(
                    name.clone(),
                    Activity {
                        loaded_at: Some(SystemTime::now()),
                        ..Activity::default()
                    },
                );
                let loaded_word = if replacing { "reloaded" } else { "loaded" };
                match kind {
                    ReadyKind::Metadata { spec, live, info } => {
                        let handle = runner::spawn(
                            self.engine.clone(),
                            spec,
                            live,
                            outcome.id,
                            self.outbox.results.clone(),
                            self.metrics.clone(),
                            &self.tracker,
                            self.cancel.clone(),
                        );
                        info!(plugin = %name, version = %info.version, "plugin {loaded_word}");
                        if self.checks.remove(&name).is_some() {
                            self.publish_checks();
                        }
                        // Dropping the old handle stops the old version's task.
                        self.loaded.insert(
                            name.clone(),
                            Loaded {
                                inputs,
                                info,
                                generation: outcome.id,
                                handle,
                                next_due: Instant::now(),
                            },
                        );
                        changes.started.push(name);
                    }
                    ReadyKind::Check(plugin) => {
                        info!(plugin = %name, "check plugin {loaded_word}");
                        if self.loaded.remove(&name).is_some() {
                            // It was a metadata plugin: its output goes.
                            forget_metrics(&self.metrics, &name);
                            changes.stopped.push(name.clone());
                        }
                        self.checks
                            .insert(name.clone(), LoadedCheck { inputs, plugin });
                        self.publish_checks();
                    }
                }
            }
            Err(FailedLoad {
                inputs,
                result,
                message,
            }) => {
                self.metrics
                    .plugin_loads
                    .get_or_create(&crate::metrics::ResultLabel { result })
                    .inc();
                report_failure(&name, &outcome.path, &message);
                let activity = self.activity.entry(name.clone()).or_default();
                activity.errors += 1;
                activity.last_error = Some(format!("load failed: {message}"));
                // The running version stays unless it is the very same
                // bytes, now refused (a trusted key was removed).
                let same_bytes = self.loaded.get(&name).map(|l| l.inputs.digest)
                    == Some(inputs.digest)
                    || self.checks.get(&name).map(|c| c.inputs.digest) == Some(inputs.digest);
                if result == "untrusted" && same_bytes {
                    if self.loaded.remove(&name).is_some() {
                        forget_metrics(&self.metrics, &name);
                        changes.stopped.push(name.clone());
                    }
                    if self.checks.remove(&name).is_some() {
                        self.publish_checks();
                    }
                    warn!(plugin = %name, "plugin unloaded: its running version is no longer trusted");
                } else if replacing {
                    warn!(plugin = %name, "the previous version keeps running");
                }
                self.untrusted.remove(&name);
                if result == "untrusted" {
                    self.untrusted.insert(name.clone(), message);
                }
                self.failed.insert(name.clone(), inputs);
            }
        }
        self.metrics
            .plugins_loaded
            .set((self.loaded.len() + self.checks.len()) as i64);
        changes
    }

    /// Counts a round's answer of the current version of its plugin (for
    /// the status: last call, calls, errors, memory).
    pub fn note_result(&mut self, result: &RoundResult) {
        let activity = self.activity.entry(result.plugin.to_string()).or_default();
        activity.last_call = Some(SystemTime::now());
        activity.calls += result.outputs.len() as u64;
        activity.errors += result.errors.len() as u64;
        if let Some((key, error)) = result.errors.last() {
            activity.last_error = Some(format!("{key}: {error}"));
        }
        if result.memory.is_some() {
            activity.memory = result.memory;
        }
    }

    /// Every plugin loaded (metadata and check) or failed, by name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let memory_limit = self.config.memory_limit;
        let row = |name: &str, version: &str, kind: &str, state: &str| {
            let activity = self.activity.get(name).cloned().unwrap_or_default();
            PluginStatus {
                name: name.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                state: state.to_string(),
                loaded_ms: activity.loaded_at.map(crate::status::unix_ms),
                last_call_ms: activity.last_call.map(crate::status::unix_ms),
                calls: activity.calls,
                errors: activity.errors,
                last_error: activity.last_error,
                memory_bytes: activity.memory,
                memory_limit_bytes: memory_limit,
            }
        };
        let mut rows: Vec<PluginStatus> = self
            .loaded
            .iter()
            .map(|(name, loaded)| row(name, &loaded.info.version, "metadata", "loaded"))
            .chain((self.checks.keys()).map(|name| row(name, "", "check", "loaded")))
            .chain(
                (self.failed.keys())
                    .filter(|name| {
                        !self.loaded.contains_key(*name) && !self.checks.contains_key(*name)
                    })
                    .map(|name| {
                        // Refused by its signature: `untrusted`, with why
                        // in `last_error`.
                        let state = if self.untrusted.contains_key(name) {
                            "untrusted"
                        } else {
                            "failed"
                        };
                        row(name, "", "", state)
                    }),
            )
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// Whether `result` comes from the currently loaded version of its plugin.
    pub fn is_current(&self, result: &RoundResult) -> bool {
        self.loaded
            .get(&*result.plugin)
            .is_some_and(|l| l.generation == result.generation)
    }

    /// Offers a round to every plugin that is due (each plugin is asked
    /// every `interval`, the collect timer's period, or at its suggested
    /// interval when longer), or to `only` when given. A plugin still busy
    /// with its last round skips one. Returns how many plugins took the
    /// round.
    pub fn start_round(
        &mut self,
        round: &Round,
        only: Option<&[String]>,
        interval: Duration,
    ) -> usize {
        let now = Instant::now();
        let mut offered = 0;
        for (name, loaded) in self.loaded.iter_mut() {
            let forced = only.is_some_and(|names| names.contains(name));
            if only.is_some() && !forced {
                continue;
            }
            if !forced && loaded.next_due > now {
                continue;
            }
            let every = loaded
                .info
                .suggested_interval
                .map_or(interval, |s| s.max(interval));
            // Small slack so a tick a hair early does not skip a whole interval.
            loaded.next_due = now + every - every / 20;
            if loaded.handle.offer(round.clone()) {
                offered += 1;
            } else {
                tracing::debug!(plugin = %name, "plugin still busy with the previous round; skipping this one");
            }
        }
        offered
    }
}

/// What `ygg-agent check` says of the plugins config's folders: an error
/// when the agent would refuse the plugins folder (nothing in it would
/// load), a warning when it would not use the compile cache folder.
pub fn check_folders(config: &PluginsConfig) -> (Option<String>, Option<String>) {
    let error = config
        .dir
        .exists()
        .then(|| ownership::check_plugins_folder(&config.dir, ownership::effective_uid()).err())
        .flatten()
        .map(|problem| {
            format!(
                "the plugins folder {} is refused, nothing in it would load: {problem}",
                config.dir.display()
            )
        });
    let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let warning = cache::check_cache_dir(&cache_dir).err();
    (error, warning)
}

/// What `plugin check` says of a plugin file's signature under
/// `trusted_keys` (`None` when no keys are set): `Ok` with the signature
/// file verified, or why the agent would refuse it.
pub fn check_signature(path: &Path, trusted_keys: &[String]) -> Option<Result<PathBuf, String>> {
    if trusted_keys.is_empty() {
        return None;
    }
    let verified = folder::read_plugin_file(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let text = signature::read_signature(path)?;
            signature::verify(trusted_keys, &bytes, text.as_deref())
        });
    Some(verified.map(|()| signature::signature_path(path)))
}

/// `agent.plugins.trustedKeys` (base64 key lines).
pub fn trusted_keys(config: &PluginsConfig) -> &[String] {
    &config.trusted_keys
}

/// Plugin `name`'s settings (`agent.plugins.settings.<name>`), as `init` gets them.
pub fn settings_for(config: Option<&PluginsConfig>, name: &str) -> Vec<(String, String)> {
    config
        .and_then(|c| c.settings.get(name))
        .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn report_failure(name: &str, path: &Path, message: &str) {
    error!(plugin = %name, file = %path.display(), error = %message, "plugin not loaded");
}

/// An unloaded plugin leaves no metric series behind.
fn forget_metrics(metrics: &Metrics, name: &str) {
    let plugin = PluginLabel {
        plugin: name.to_string(),
    };
    metrics.plugin_call_seconds.remove(&plugin);
    metrics.plugin_restarts.remove(&plugin);
    for result in ["ok", "error"] {
        metrics.plugin_calls.remove(&PluginResultLabel {
            plugin: name.to_string(),
            result,
        });
    }
}

#[cfg(test)]
mod tests;
