//! One plugin file loaded and run outside a plugin host: `ygg-agent plugin
//! check` (a metadata plugin, timed) and the benchmarks' check plugins.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use super::check::CheckPlugin;
use super::engine::{self, PluginEngine};
use super::folder;
use super::instance::PluginInstance;
use super::runner::{self, Limits, PluginInfo};
use super::system;

/// Loads one check plugin file outside a plugin host (benchmarks, tools):
/// compile, check it implements the `check` world, instantiate it once.
/// The plugin keeps its own engine (and epoch ticker) alive.
pub async fn load_check_plugin(
    path: &Path,
    settings: Vec<(String, String)>,
    limits: Limits,
) -> Result<Arc<CheckPlugin>, String> {
    let bytes = folder::read_plugin_file(path).map_err(|e| e.to_string())?;
    let name = plugin_name(path);
    let engine = Arc::new(PluginEngine::new(None).map_err(|e| e.to_string())?);
    let digest = sha2::Sha256::digest(&bytes).into();
    let prepared = engine.prepare(&bytes, &digest).map_err(|e| e.to_string())?;
    let engine::PreparedPre::Check(pre) = prepared.pre else {
        return Err("a metadata plugin, not a check plugin (world `check`)".into());
    };
    let plugin = CheckPlugin::new(Arc::from(name.as_str()), engine, pre, settings, limits);
    plugin
        .try_instantiate()
        .await
        .map_err(|e| format!("instantiation {e}"))?;
    Ok(Arc::new(plugin))
}

/// What `ygg-agent plugin check` found.
#[derive(Debug)]
pub struct FileReport {
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
    /// The most linear memory the instance had after the calls, in bytes.
    pub memory_peak: u64,
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
) -> Result<FileReport, String> {
    let bytes = folder::read_plugin_file(path).map_err(|e| e.to_string())?;
    let name = plugin_name(path);
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
    let engine::PreparedPre::Metadata(pre) = prepared.pre else {
        return Err(
            "a check plugin (world `check`): use it in a check of kind `plugin` (agent.instances[].checks); `plugin check` runs metadata plugins"
                .into(),
        );
    };
    let spec = runner::Spec {
        name: Arc::from(name.as_str()),
        pre,
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
    let memory_peak = live.memory_peak();
    Ok(FileReport {
        info: PluginInfo::from(info),
        output,
        compile,
        cache_load,
        instantiate,
        warm_calls,
        memory_peak,
    })
}

/// A plugin's name: its file name without `.wasm`.
fn plugin_name(path: &Path) -> String {
    (path.file_stem().and_then(|s| s.to_str()))
        .unwrap_or("plugin")
        .to_string()
}
