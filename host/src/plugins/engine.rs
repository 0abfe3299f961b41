//! The one wasmtime [`Engine`] of the process, the [`Linker`] built once for
//! it, and turning a `.wasm` file into something ready to instantiate:
//! checks, compile (or load from the [`CompileCache`]), WIT version check,
//! pre-instantiation. The WIT versions the agent supports are listed once,
//! in [`WIT_VERSIONS`].

use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::background;
use super::cache::CompileCache;
use super::state::PluginState;
use super::ticker::EpochTicker;
use super::{v0_1_0, v0_2_0};
use crate::systemd;

/// The WIT package plugins implement.
pub const WIT_PACKAGE: &str = "ygg:agent-plugin";

/// Files larger than this are refused without being read.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// Why a file is not a usable plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("refused: {0}")]
    Untrusted(String),
    #[error("cannot compile it: {0}")]
    CompileChild(String),
    #[error("it is {0} bytes; plugins are limited to {MAX_PLUGIN_BYTES} bytes")]
    TooLarge(u64),
    #[error(
        "not a WebAssembly file (it may still be being written: copy it elsewhere, then rename it into the folder)"
    )]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build plugins with `cargo build --target wasm32-wasip2` against ygg-agent-sdk"
    )]
    CoreModule,
    #[error("cannot compile it: {0}")]
    Compile(String),
    #[error(
        "built for {WIT_PACKAGE}@{found}; this agent supports {supported}: rebuild it with a matching ygg-agent-sdk"
    )]
    UnknownVersion { found: String, supported: String },
    #[error("not a ygg-agent plugin: {0}")]
    NotAPlugin(String),
    #[error(
        "it imports `{0}`, and plugins get no network: build it without wasi:http (componentize-js: add `-d http fetch-event`)"
    )]
    ImportsHttp(String),
}

/// One WIT version the agent has bindings for.
struct WitVersion {
    /// The version in the package's import names (`ygg:agent-plugin/host@0.1.0`).
    version: &'static str,
    /// Adds the host side of that version's imports.
    add_to_linker: fn(&mut Linker<PluginState>) -> wasmtime::Result<()>,
}

/// Every WIT version this agent supports, oldest first: each has its own
/// folder `guest-sdk/wit/v<version>/` (frozen once published), its own
/// bindings module (`v0_1_0`, …) and one row here. A new version adds a
/// folder, a module and a row; none is edited or removed, so a plugin built
/// for an older version keeps loading.
const WIT_VERSIONS: &[WitVersion] = &[
    WitVersion {
        version: v0_1_0::VERSION,
        add_to_linker: v0_1_0::add_to_linker,
    },
    WitVersion {
        version: v0_2_0::VERSION,
        add_to_linker: v0_2_0::add_to_linker,
    },
];

/// The engine settings: the agent's engine and the compile child's must
/// be built from the same, or the child's code does not load.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config
}

/// The engine, its linker and the compile cache.
pub struct PluginEngine {
    engine: Engine,
    ticker: Arc<EpochTicker>,
    linker: Linker<PluginState>,
    cache: Option<CompileCache>,
}

impl PluginEngine {
    /// Creates the engine and starts its epoch ticker (a plain OS thread that
    /// ends when the engine is dropped). `cache_dir` is used only if the
    /// agent's user alone can write it (see [`CompileCache::open`]).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        background::init_compile_pool();
        let engine = Engine::new(&engine_config())?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        for wit in WIT_VERSIONS {
            (wit.add_to_linker)(&mut linker)?;
        }

        let ticker = EpochTicker::start(&engine)?;

        // Engine settings and version, folded into cache entry names so a
        // different agent build never loads another's compiled code.
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let compatibility = hex::encode(&hasher.0.finalize()[..8]);
        let cache = cache_dir.and_then(|dir| CompileCache::open(&dir, compatibility));
        Ok(PluginEngine {
            engine,
            ticker,
            linker,
            cache,
        })
    }

    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn ticker(&self) -> &Arc<EpochTicker> {
        &self.ticker
    }

    /// Checks, compiles (or loads from the cache) and links `bytes`, whose
    /// SHA-256 is `digest` (the cache key). Blocking: compiling, reading
    /// and cleaning the cache all happen here, so callers on an async
    /// runtime run it with `spawn_blocking`.
    pub fn prepare(&self, bytes: &[u8], digest: &[u8; 32]) -> Result<Prepared, LoadError> {
        check_header(bytes)?;
        let (component, from_cache) = self.compile(bytes, &hex::encode(digest))?;
        self.link(component, from_cache)
    }

    /// The cached code of `bytes` (SHA-256 `digest`), ready to
    /// instantiate, or `None` when the cache has no trustworthy entry for
    /// it: then [`compile_child::compile`] it and hand the code to
    /// [`PluginEngine::prepare_compiled`]. Blocking (the cache's first use
    /// cleans it).
    ///
    /// [`compile_child::compile`]: super::compile_child::compile
    pub fn prepare_cached(
        &self,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<Option<Prepared>, LoadError> {
        check_header(bytes)?;
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        cache.sweep_once();
        match cache.load(&self.engine, &hex::encode(digest)) {
            Some(component) => self.link(component, true).map(Some),
            None => Ok(None),
        }
    }

    /// Takes the code a compile child wrote for the plugin whose SHA-256
    /// is `digest`: stores it in the cache and maps it from there, or,
    /// with no cache, maps it from `code` itself. Blocking.
    pub fn prepare_compiled(
        &self,
        code: &std::fs::File,
        digest: &[u8; 32],
    ) -> Result<Prepared, LoadError> {
        let digest = hex::encode(digest);
        let mut component = None;
        if let Some(cache) = &self.cache {
            cache.store_code(&digest, code);
            component = cache.load(&self.engine, &digest);
        }
        let component = match component {
            Some(component) => component,
            // SAFETY: `code` is a sealed memfd only this process holds,
            // written by a compile child running this very binary
            // (`/proc/self/exe`) with the same engine settings.
            None => unsafe { super::cache::deserialize_open_file(&self.engine, code) }
                .map_err(|e| LoadError::Compile(format!("cannot load the compiled code: {e:#}")))?,
        };
        self.link(component, false)
    }

    /// Checks the world `component` implements and pre-instantiates it.
    fn link(&self, component: Component, from_cache: bool) -> Result<Prepared, LoadError> {
        let world = check_world(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::NotAPlugin(format!("{e:#}")))?;
        let not_a_plugin = |e: wasmtime::Error| LoadError::NotAPlugin(format!("{e:#}"));
        let pre = match world {
            // 0.1.0 and 0.2.0 metadata plugins alike (see `v0_2_0`).
            World::Plugin => {
                PreparedPre::Metadata(v0_1_0::PluginPre::new(pre).map_err(not_a_plugin)?)
            }
            World::Check => PreparedPre::Check(v0_2_0::CheckPre::new(pre).map_err(not_a_plugin)?),
        };
        Ok(Prepared { pre, from_cache })
    }

    /// Compiles `bytes`, through the cache when there is one: the first
    /// call cleans the cache (the sweep at start), and every write is
    /// followed by one.
    fn compile(&self, bytes: &[u8], digest: &str) -> Result<(Component, bool), LoadError> {
        if let Some(cache) = &self.cache {
            cache.sweep_once();
            if let Some(component) = cache.load(&self.engine, digest) {
                return Ok((component, true));
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let Some(cache) = &self.cache {
            cache.store(digest, &component);
        }
        Ok((component, false))
    }
}

/// Returns freed heap memory to the system. Loading a large component (a
/// Python or JavaScript plugin carries its interpreter) allocates hundreds
/// of MiB: the file, the compiler's working memory, the serialised code
/// for the cache. glibc keeps them in its per-thread arenas once freed:
/// without this, a Python plugin's cold compile left the agent's RSS
/// 320 MiB higher for good, with it 113-137 MiB (BENCHMARKS.md). Blocking
/// (it walks the heap): call it where the load itself runs.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A plugin ready to instantiate.
pub struct Prepared {
    pub pre: PreparedPre,
    pub from_cache: bool,
}

/// The pre-instance of a plugin, by the world it implements.
pub enum PreparedPre {
    /// A metadata plugin (`plugin` world, 0.1.0 or 0.2.0).
    Metadata(v0_1_0::PluginPre<PluginState>),
    /// A health-check plugin (`check` world, 0.2.0).
    Check(v0_2_0::CheckPre<PluginState>),
}

/// The world a component implements, told by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum World {
    Plugin,
    Check,
}

/// `\0asm` then the layer/version: 1 for core modules, 0x1000d for components.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
        [_, _, 0x01, 0x00] => Ok(()),
        _ => Err(LoadError::NotWasm),
    }
}

/// The component must target a WIT version this agent has bindings for,
/// and implement one world: `plugin` (describe, init, collect) or `check`.
fn check_world(engine: &Engine, component: &Component) -> Result<World, LoadError> {
    let ty = component.component_type();
    let prefix = format!("{WIT_PACKAGE}/");
    let newest = WIT_VERSIONS
        .last()
        .expect("at least one WIT version")
        .version;
    let mut ours = false;
    for (name, _) in ty.imports(engine) {
        // A JavaScript engine built without `-d http fetch-event` imports
        // wasi:http, which the linker lacks: say how to build it instead of
        // naming a missing resource.
        if name.starts_with("wasi:http/") {
            return Err(LoadError::ImportsHttp(name.to_string()));
        }
        if let Some(rest) = name.strip_prefix(&prefix) {
            let version = rest.split_once('@').map_or("", |(_, v)| v);
            if !WIT_VERSIONS.iter().any(|wit| wit.version == version) {
                return Err(LoadError::UnknownVersion {
                    found: if version.is_empty() {
                        "(no version)".into()
                    } else {
                        version.into()
                    },
                    supported: WIT_VERSIONS
                        .iter()
                        .map(|wit| format!("{WIT_PACKAGE}@{}", wit.version))
                        .collect::<Vec<_>>()
                        .join(" and "),
                });
            }
            ours = true;
        }
    }
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let metadata = ["describe", "init", "collect"];
    if exports.contains(&"check") {
        if metadata.iter().any(|f| exports.contains(f)) {
            return Err(LoadError::NotAPlugin(format!(
                "it exports both {WIT_PACKAGE}@{newest}'s `check` and metadata functions: a plugin implements one world (build two plugins)"
            )));
        }
        // A check plugin that never calls the host imports nothing of
        // ours; `CheckPre::new` still checks the export's types.
        return Ok(World::Check);
    }
    let missing: Vec<&str> = metadata
        .into_iter()
        .filter(|f| !exports.contains(f))
        .collect();
    if !ours || !missing.is_empty() {
        return Err(LoadError::NotAPlugin(format!(
            "it does not implement the {WIT_PACKAGE}@{newest} world (missing: {})",
            if missing.is_empty() {
                "the host imports".to_string()
            } else {
                missing.join(", ")
            }
        )));
    }
    Ok(World::Plugin)
}

/// The default cache folder: systemd's `CACHE_DIRECTORY`, else the XDG cache
/// folder, else `~/.cache`, else a per-user folder in the temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = systemd::directory("CACHE_DIRECTORY") {
        return dir.join("plugins");
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ygg-agent/plugins");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache/ygg-agent/plugins");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ygg-agent-{uid}/plugins"))
}

/// Feeds `Hash` output into SHA-256: a stable digest, unlike `DefaultHasher`.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert_eq!(check_header(b"hello world"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert_eq!(
            check_header(b"\x7fELF\x02\x01\x01\0"),
            Err(LoadError::NotWasm)
        );
    }

    /// A minimal component exporting one function named `export`.
    fn component_source(export: &str) -> (Vec<u8>, String) {
        let wat = format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func (export "{export}") (canon lift (core func $i "f"))))"#
        );
        let digest = hex::encode(Sha256::digest(wat.as_bytes()));
        (wat.into_bytes(), digest)
    }

    fn exports(engine: &PluginEngine, component: &Component) -> Vec<String> {
        let ty = component.component_type();
        ty.exports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect()
    }

    #[test]
    fn a_component_importing_wasi_http_is_refused_with_how_to_build_it() {
        let engine = PluginEngine::new(None).unwrap();
        let wat = r#"(component (import "wasi:http/types@0.2.10" (instance)))"#;
        let component = Component::new(engine.engine(), wat).unwrap();
        let error = check_world(engine.engine(), &component).unwrap_err();
        assert_eq!(
            error,
            LoadError::ImportsHttp("wasi:http/types@0.2.10".into())
        );
        assert!(error.to_string().contains("-d http fetch-event"), "{error}");
    }

    #[test]
    fn a_cache_folder_others_can_write_is_never_read_or_written() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let engine = PluginEngine::new(Some(dir.clone())).unwrap();
        let (bytes, digest) = component_source("a");
        for _ in 0..2 {
            let (component, from_cache) = engine.compile(&bytes, &digest).unwrap();
            assert!(!from_cache);
            assert_eq!(exports(&engine, &component), ["a"]);
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_planted_entry_is_compiled_over_and_the_right_plugin_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = PluginEngine::new(Some(dir.clone())).unwrap();
        let (a, digest_a) = component_source("a");
        let (b, _) = component_source("b");
        // B's machine code under A's name, then owned by another user.
        let (_, from_cache) = engine.compile(&b, &digest_a).unwrap();
        assert!(!from_cache);
        let planted = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
        let path =
            std::ffi::CString::new(planted.path().into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; -1 keeps the group.
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, u32::MAX) }, 0);

        let (component, from_cache) = engine.compile(&a, &digest_a).unwrap();
        assert!(!from_cache, "the planted entry was loaded");
        assert_eq!(exports(&engine, &component), ["a"]);
        // The entry was rewritten by the agent: now it is A, from the cache.
        let (component, from_cache) = engine.compile(&a, &digest_a).unwrap();
        assert!(from_cache);
        assert_eq!(exports(&engine, &component), ["a"]);
    }
}
