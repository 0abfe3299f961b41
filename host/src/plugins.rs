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
mod engine;
mod folder;
mod inspect;
mod instance;
pub mod output;
mod runner;
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
use std::time::Duration;

use sha2::Digest;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::PluginsConfig;
use crate::metrics::{Metrics, PluginLabel, PluginResultLabel};

pub use check::{CheckPlugin, CheckPlugins, CheckTarget, MAX_CHECK_OUTPUT};
pub use engine::{LoadError, PluginEngine, default_cache_dir};
pub use folder::Scan;
pub use inspect::{CheckReport, check_file, load_check_plugin};
pub use instance::PluginInstance;
pub use runner::{CallError, Limits, PluginInfo, Round, RoundResult, wears_out};

/// What a load depends on: the same inputs give the same outcome, so a
/// plugin is (re)loaded only when one of them changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadInputs {
    digest: [u8; 32],
    settings: Vec<(String, String)>,
    limits: Limits,
}

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

/// A plugin compiled, instantiated and initialised, not yet running.
pub struct Ready {
    inputs: LoadInputs,
    kind: ReadyKind,
    from_cache: bool,
    compile_time: Duration,
}

/// What a load produced, by world.
// `Ready` travels boxed (`LoadOutcome`): the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum ReadyKind {
    Metadata {
        spec: runner::Spec,
        live: runner::Live,
        info: PluginInfo,
    },
    Check(Arc<CheckPlugin>),
}

/// The end of one load, sent back to the supervisor (see
/// [`PluginHost::finish_load`]).
pub struct LoadOutcome {
    name: String,
    /// Which request this answers: only the newest request's outcome counts.
    id: u64,
    path: PathBuf,
    result: Result<Box<Ready>, (LoadInputs, String)>,
}

impl std::fmt::Debug for LoadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOutcome")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("ok", &self.result.is_ok())
            .finish()
    }
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
/// supervisor reads both receivers.
#[derive(Clone)]
pub struct Outbox {
    pub results: mpsc::Sender<RoundResult>,
    pub scans: mpsc::Sender<Scan>,
    pub loads: mpsc::Sender<LoadOutcome>,
    /// The loaded check plugins, for the health checks (read with
    /// `borrow`; the host replaces the map whenever one loads or goes).
    pub check_plugins: watch::Sender<CheckPlugins>,
}

/// The plugins of one agent. Every method returns at once: scans and loads
/// run beside the caller and come back through the [`Outbox`] as a
/// [`Scan`] (hand it to [`PluginHost::apply_scan`]) or a [`LoadOutcome`]
/// (hand it to [`PluginHost::finish_load`]).
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    config: PluginsConfig,
    loaded: BTreeMap<String, Loaded>,
    /// Check plugins, by name (a name is in `loaded` or here, not both).
    checks: BTreeMap<String, LoadedCheck>,
    pending: HashMap<String, Pending>,
    /// Files that failed to load, by name, with what they were loaded with:
    /// not retried until the bytes, settings or limits change.
    failed: HashMap<String, LoadInputs>,
    /// Each plugin file's digest and stamp from the last scan.
    known: HashMap<String, ([u8; 32], folder::Stamp)>,
    /// Problems already reported (unreadable files, the folder, names that
    /// are not plugin names) with their message, so a folder full of junk
    /// is reported once, not on every event. Pruned on every scan.
    warned: HashMap<PathBuf, String>,
    /// A scan is running; `rescan` asks for another one after it.
    scanning: bool,
    rescan: bool,
    outbox: Outbox,
    metrics: Metrics,
    tracker: TaskTracker,
    /// Cancels every load when the host is dropped.
    cancel: CancellationToken,
    next_id: u64,
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
    ///
    /// [`scan`]: PluginHost::scan
    pub fn new(
        config: PluginsConfig,
        outbox: Outbox,
        metrics: Metrics,
        tracker: TaskTracker,
    ) -> anyhow::Result<Self> {
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let engine = Arc::new(PluginEngine::new(Some(cache_dir))?);
        Ok(PluginHost {
            engine,
            config,
            loaded: BTreeMap::new(),
            checks: BTreeMap::new(),
            pending: HashMap::new(),
            failed: HashMap::new(),
            known: HashMap::new(),
            warned: HashMap::new(),
            scanning: false,
            rescan: false,
            outbox,
            metrics,
            tracker,
            cancel: CancellationToken::new(),
            next_id: 0,
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

    /// Publishes the check plugins as they are now.
    fn publish_checks(&self) {
        let map: BTreeMap<String, Arc<CheckPlugin>> = self
            .checks
            .iter()
            .map(|(name, loaded)| (name.clone(), loaded.plugin.clone()))
            .collect();
        self.outbox.check_plugins.send_replace(Arc::new(map));
    }

    /// No scan and no load is under way.
    pub fn is_settled(&self) -> bool {
        !self.scanning && !self.rescan && self.pending.is_empty()
    }

    /// Takes a new `agent.plugins` config: another folder unloads
    /// everything; other settings or limits reload what they change once
    /// the scan this starts comes back. Returns the plugins stopped now.
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
        self.scan();
        changes
    }

    /// Scans the folder beside the caller (one scan at a time; a request
    /// during a scan runs one more after it). The [`Scan`] arrives through
    /// the outbox.
    pub fn scan(&mut self) {
        if self.scanning {
            self.rescan = true;
            return;
        }
        self.scanning = true;
        self.rescan = false;
        let dir = self.config.dir.clone();
        let known = self.known.clone();
        let scans = self.outbox.scans.clone();
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let scan = tokio::task::spawn_blocking(move || folder::scan(&dir, &known));
            tokio::select! {
                () = cancel.cancelled() => {}
                Ok(scan) = scan => {
                    let _ = scans.send(scan).await;
                }
            }
        });
    }

    /// Compares a scan with what is loaded: unloads plugins whose file is
    /// gone (returned in `stopped`), and starts a load for every file whose
    /// bytes, settings or limits changed. The old version of a plugin keeps
    /// serving until its new version is ready.
    pub fn apply_scan(&mut self, scan: Scan) -> Changes {
        self.scanning = false;
        let mut changes = Changes::default();
        if self.rescan {
            self.scan();
        }
        if scan.dir != self.config.dir {
            // A scan of the folder before a reconfigure: stale.
            return changes;
        }
        // An unreadable folder changes nothing: plugins are unloaded when
        // their files go, not when a read fails.
        let files = match scan.files {
            Ok(files) => {
                self.warned.remove(&self.config.dir);
                files
            }
            Err(message) => {
                let dir = self.config.dir.clone();
                self.warn_once(&dir, &message, || {
                    warn!(dir = %dir.display(), error = %message, "cannot read the plugins folder");
                });
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
        self.pending.retain(|name, _| files.contains_key(name));
        self.known.clear();
        for (name, file) in files {
            match file.digest {
                Ok((digest, stamp)) => {
                    self.known.insert(name.clone(), (digest, stamp));
                    self.load_if_changed(&name, file.path, digest);
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
    fn load_if_changed(&mut self, name: &str, path: PathBuf, digest: [u8; 32]) {
        let inputs = LoadInputs {
            digest,
            settings: settings_for(Some(&self.config), name),
            limits: Limits::of(Some(&self.config)),
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
                let Ready {
                    inputs,
                    kind,
                    from_cache,
                    compile_time,
                } = *ready;
                tracing::debug!(plugin = %name, from_cache, compile = ?compile_time, "plugin compiled");
                self.failed.remove(&name);
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
            Err((inputs, message)) => {
                report_failure(&name, &outcome.path, &message);
                self.failed.insert(name.clone(), inputs);
                if replacing {
                    warn!(plugin = %name, "the previous version keeps running");
                }
            }
        }
        self.metrics
            .plugins_loaded
            .set((self.loaded.len() + self.checks.len()) as i64);
        changes
    }

    /// Whether `result` comes from the currently loaded version of its plugin.
    pub fn is_current(&self, result: &RoundResult) -> bool {
        self.loaded
            .get(&*result.plugin)
            .is_some_and(|l| l.generation == result.generation)
    }

    /// Offers a round to every plugin that is due (each plugin is asked
    /// every `interval`, or at its suggested interval when longer), or to
    /// `only` when given. A plugin still busy with its last round skips one.
    /// Returns how many plugins took the round.
    pub fn start_round(&mut self, round: &Round, only: Option<&[String]>) -> usize {
        let now = Instant::now();
        let interval = self.config.interval;
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

/// One load: read the file, compile (or load from the cache) on a blocking
/// thread, then instantiate, `describe` and `init` under the call limits.
struct Load {
    engine: Arc<PluginEngine>,
    name: String,
    path: PathBuf,
    inputs: LoadInputs,
}

impl Load {
    async fn run(self, id: u64) -> LoadOutcome {
        let Load {
            engine,
            name,
            path,
            mut inputs,
        } = self;
        let started = std::time::Instant::now();
        let file = path.clone();
        let compiler = engine.clone();
        // Reading and compiling block (the compile for seconds, for a large
        // component): keep them off the async workers, on a thread of low
        // priority. Nobody waits for it at shutdown; its result is dropped.
        let prepared = match background::spawn("ygg-plugin-load", move || {
            let prepared = folder::read_plugin_file(&file).and_then(|bytes| {
                // The file may have changed since the scan: what loads is
                // what was read now, and the inputs say so.
                let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                compiler.prepare(&bytes, &digest).map(|p| (p, digest))
            });
            engine::release_freed_memory();
            prepared
        }) {
            Ok(answer) => answer.await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let fail = |inputs: LoadInputs, message: String| LoadOutcome {
            name: name.clone(),
            id,
            path: path.clone(),
            result: Err((inputs, message)),
        };
        let (prepared, digest) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => return fail(inputs, error.to_string()),
            Err(error) => return fail(inputs, format!("the compiler task failed: {error}")),
        };
        inputs.digest = digest;
        let compile_time = started.elapsed();
        let name_arc: Arc<str> = Arc::from(name.as_str());
        let kind = match prepared.pre {
            engine::PreparedPre::Metadata(pre) => {
                let spec = runner::Spec {
                    name: name_arc,
                    pre,
                    settings: inputs.settings.clone(),
                    limits: inputs.limits,
                };
                match runner::instantiate(&engine, &spec, Arc::new(system::read())).await {
                    Ok((live, info)) => ReadyKind::Metadata {
                        spec,
                        live,
                        info: PluginInfo::from(info),
                    },
                    Err(error) => return fail(inputs, format!("init {error}")),
                }
            }
            engine::PreparedPre::Check(pre) => {
                let plugin = CheckPlugin::new(
                    name_arc,
                    engine.clone(),
                    pre,
                    inputs.settings.clone(),
                    inputs.limits,
                );
                if let Err(error) = plugin.try_instantiate().await {
                    return fail(inputs, format!("instantiation {error}"));
                }
                ReadyKind::Check(Arc::new(plugin))
            }
        };
        LoadOutcome {
            name,
            id,
            path,
            result: Ok(Box::new(Ready {
                inputs,
                kind,
                from_cache: prepared.from_cache,
                compile_time,
            })),
        }
    }
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
