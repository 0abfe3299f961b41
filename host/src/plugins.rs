//! WebAssembly metadata plugins: the plugins folder, loading, reloading and
//! unloading, and collection rounds. The supervisor owns the [`PluginHost`];
//! each loaded plugin runs in its own task (see [`runner`]) and sends its
//! round results back over a channel the supervisor reads.
//!
//! Nothing here knows about etcd: plugin output goes to the supervisor,
//! which merges it into the desired state.

mod cache;
mod engine;
pub mod output;
mod runner;
mod state;
mod stdio;
pub mod system;
mod ticker;
mod v0_1_0;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, PluginsConfig};
use crate::metrics::Metrics;
use crate::record::Instance;

pub use engine::{LoadError, PluginEngine, default_cache_dir};
pub use runner::{CallError, Limits, Round, RoundResult};
use system::SystemSnapshot;

/// An instance as plugins see it: as configured, with its registry key.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInstance {
    pub key: String,
    pub instance: Instance,
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

/// What a rescan changed, for the supervisor to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Newly loaded or replaced: collect from them now.
    pub started: Vec<String>,
    /// Gone: their metadata must be removed from the instances.
    pub stopped: Vec<String>,
}

/// The plugins of one agent.
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    config: PluginsConfig,
    loaded: BTreeMap<String, Loaded>,
    /// Files that failed to load, by name, with what they were loaded with:
    /// not retried until the bytes, settings or limits change.
    failed: HashMap<String, LoadInputs>,
    /// Names already warned about (not a plugin name, unreadable), so a
    /// folder full of junk is reported once, not on every event.
    warned: HashMap<PathBuf, String>,
    results: mpsc::Sender<RoundResult>,
    metrics: Metrics,
    tracker: TaskTracker,
    generation: u64,
}

impl PluginHost {
    /// Creates the engine. `results` receives every round's results.
    pub fn new(
        config: PluginsConfig,
        results: mpsc::Sender<RoundResult>,
        metrics: Metrics,
        tracker: TaskTracker,
    ) -> anyhow::Result<Self> {
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let engine = Arc::new(PluginEngine::new(Some(cache_dir))?);
        Ok(PluginHost {
            engine,
            config,
            loaded: BTreeMap::new(),
            failed: HashMap::new(),
            warned: HashMap::new(),
            results,
            metrics,
            tracker,
            generation: 0,
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

    /// Takes a new `agent.plugins` config: another folder or other limits
    /// reload everything, other settings reload that plugin. Returns what
    /// the rescan that follows changed.
    pub async fn reconfigure(
        &mut self,
        config: PluginsConfig,
        system: Arc<SystemSnapshot>,
    ) -> Changes {
        let mut stopped = Vec::new();
        if config.dir != self.config.dir {
            stopped = std::mem::take(&mut self.loaded).into_keys().collect();
            self.failed.clear();
            self.warned.clear();
        }
        self.config = config;
        let mut changes = self.rescan(system).await;
        for name in stopped {
            if !changes.started.contains(&name) {
                changes.stopped.push(name);
            }
        }
        self.metrics.plugins_loaded.set(self.loaded.len() as i64);
        changes
    }

    /// Compares the folder with what is loaded: loads new files, reloads
    /// changed ones (the old version keeps serving until the new one has
    /// compiled and initialised), unloads deleted ones.
    pub async fn rescan(&mut self, system: Arc<SystemSnapshot>) -> Changes {
        let mut changes = Changes::default();
        // An unreadable folder changes nothing: plugins are unloaded when
        // their files go, not when a read fails.
        let Some(files) = self.list_folder() else {
            return changes;
        };
        let gone: Vec<String> = self
            .loaded
            .keys()
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.loaded.remove(&name);
            info!(plugin = %name, "plugin unloaded (its file is gone)");
            changes.stopped.push(name);
        }
        self.failed.retain(|name, _| files.contains_key(name));
        for (name, path) in files {
            if self.load_if_changed(&name, &path, system.clone()).await {
                changes.started.push(name);
            }
        }
        self.metrics.plugins_loaded.set(self.loaded.len() as i64);
        changes
    }

    /// `*.wasm` files in the folder whose stem is a plugin name; `None`
    /// when the folder cannot be read.
    fn list_folder(&mut self) -> Option<BTreeMap<String, PathBuf>> {
        let mut files = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.config.dir) {
            Ok(entries) => entries,
            Err(error) => {
                let message = error.to_string();
                if self.warned.get(&self.config.dir) != Some(&message) {
                    warn!(dir = %self.config.dir.display(), %error, "cannot read the plugins folder");
                    self.warned.insert(self.config.dir.clone(), message);
                }
                return None;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !config::is_plugin_name(stem) {
                if let std::collections::hash_map::Entry::Vacant(entry) = self.warned.entry(path) {
                    warn!(file = %entry.key().display(), "ignoring a .wasm file whose name is not a plugin name (letters, digits, `_`, `-`, `.`)");
                    entry.insert(String::new());
                }
                continue;
            }
            files.insert(stem.to_string(), path);
        }
        self.warned.remove(&self.config.dir);
        Some(files)
    }

    /// Loads `path` as plugin `name` unless the same bytes with the same
    /// settings and limits are already loaded (or already failed). True when
    /// a new version started.
    async fn load_if_changed(
        &mut self,
        name: &str,
        path: &Path,
        system: Arc<SystemSnapshot>,
    ) -> bool {
        let bytes = match read_plugin_file(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                report_failure(name, path, &error.to_string());
                return false;
            }
        };
        let inputs = LoadInputs {
            digest: sha2::Sha256::digest(&bytes).into(),
            settings: settings_for(Some(&self.config), name),
            limits: Limits::of(Some(&self.config)),
        };
        if self
            .loaded
            .get(name)
            .is_some_and(|loaded| loaded.inputs == inputs)
            || self.failed.get(name) == Some(&inputs)
        {
            return false;
        }
        let replacing = self.loaded.contains_key(name);
        match self.start(name, bytes, inputs.clone(), system).await {
            Ok(loaded) => {
                self.failed.remove(name);
                info!(
                    plugin = %name,
                    version = %loaded.info.version,
                    "{}",
                    if replacing { "plugin reloaded" } else { "plugin loaded" }
                );
                // Dropping the old handle stops the old version's task.
                self.loaded.insert(name.to_string(), loaded);
                true
            }
            Err(message) => {
                report_failure(name, path, &message);
                self.failed.insert(name.to_string(), inputs);
                if replacing {
                    warn!(plugin = %name, "the previous version keeps running");
                }
                false
            }
        }
    }

    /// Compiles, instantiates, describes and initialises; spawns the runner.
    async fn start(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        inputs: LoadInputs,
        system: Arc<SystemSnapshot>,
    ) -> Result<Loaded, String> {
        let engine = self.engine.clone();
        let digest = inputs.digest;
        let started = std::time::Instant::now();
        // Compiling is CPU-heavy: keep it off the async workers.
        let prepared = self
            .tracker
            .spawn_blocking(move || engine.prepare(&bytes, &digest))
            .await
            .map_err(|e| format!("the compiler task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let compile_time = started.elapsed();
        let spec = runner::Spec {
            name: Arc::from(name),
            pre: prepared.pre,
            settings: inputs.settings.clone(),
            limits: inputs.limits,
        };
        let (live, info) = runner::instantiate(&self.engine, &spec, system)
            .await
            .map_err(|e| format!("init {e}"))?;
        let info = PluginInfo::from(info);
        tracing::debug!(plugin = %name, from_cache = prepared.from_cache, compile = ?compile_time, "plugin compiled");
        self.generation += 1;
        let handle = runner::spawn(
            self.engine.clone(),
            spec,
            live,
            self.generation,
            self.results.clone(),
            self.metrics.clone(),
            &self.tracker,
        );
        Ok(Loaded {
            inputs,
            info,
            generation: self.generation,
            handle,
            next_due: Instant::now(),
        })
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
    pub fn start_round(&mut self, round: &Round, only: Option<&[String]>) {
        let now = Instant::now();
        let interval = self.config.interval;
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
            if !loaded.handle.offer(round.clone()) {
                tracing::debug!(plugin = %name, "plugin still busy with the previous round; skipping this one");
            }
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

fn read_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let metadata = std::fs::metadata(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if !metadata.is_file() {
        return Err(LoadError::Read("not a regular file".into()));
    }
    if metadata.len() > engine::MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(metadata.len()));
    }
    std::fs::read(path).map_err(|e| LoadError::Read(e.to_string()))
}

/// What `ygg-agent plugin check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub info: PluginInfo,
    pub output: BTreeMap<String, String>,
    /// Compiling the component to machine code (no cache).
    pub compile: Duration,
    /// Loading the same code from a compile cache.
    pub cache_load: Duration,
    /// Instantiating, `describe` and `init`.
    pub instantiate: Duration,
    /// Durations of the warm calls after the first, sorted (empty unless
    /// more than one call was asked for).
    pub warm_calls: Vec<Duration>,
}

/// Loads one plugin file and runs it, for `ygg-agent plugin check`:
/// compile (cold, then from a throwaway cache), describe, init with
/// `settings`, and `calls` collects for `instance` on the same instance.
pub async fn check_file(
    path: &Path,
    settings: Vec<(String, String)>,
    limits: Limits,
    instance: PluginInstance,
    calls: usize,
) -> Result<CheckReport, String> {
    let bytes = read_plugin_file(path).map_err(|e| e.to_string())?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let cache = tempfile::tempdir().map_err(|e| format!("cannot create a temp cache: {e}"))?;
    let engine = PluginEngine::new(Some(cache.path().to_path_buf())).map_err(|e| e.to_string())?;
    let digest = sha2::Sha256::digest(&bytes).into();
    let started = std::time::Instant::now();
    let cold = engine.prepare(&bytes, &digest).map_err(|e| e.to_string())?;
    let compile = started.elapsed();
    drop(cold);
    let started = std::time::Instant::now();
    let prepared = engine.prepare(&bytes, &digest).map_err(|e| e.to_string())?;
    let cache_load = started.elapsed();
    let spec = runner::Spec {
        name: Arc::from(name.as_str()),
        pre: prepared.pre,
        settings,
        limits,
    };
    let system = Arc::new(system::read());
    let started = std::time::Instant::now();
    let (mut live, info) = runner::instantiate(&engine, &spec, system)
        .await
        .map_err(|e| format!("init {e}"))?;
    let instantiate = started.elapsed();
    let output = runner::collect_once(&mut live, &instance, limits.timeout)
        .await
        .map_err(|e| format!("collect {e}"))?;
    let mut warm_calls = Vec::with_capacity(calls.saturating_sub(1));
    for _ in 1..calls {
        let started = std::time::Instant::now();
        runner::collect_once(&mut live, &instance, limits.timeout)
            .await
            .map_err(|e| format!("collect {e}"))?;
        warm_calls.push(started.elapsed());
    }
    warm_calls.sort();
    Ok(CheckReport {
        info: PluginInfo::from(info),
        output,
        compile,
        cache_load,
        instantiate,
        warm_calls,
    })
}
