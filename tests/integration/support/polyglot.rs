//! One compile cache for the Python and JavaScript plugins per test run.
//!
//! These components are 12-18 MB and each takes seconds to compile, tens
//! of seconds at nice 10 on a busy 2-core machine. The tests that run them
//! point their agents at one cache folder for the whole test process, and
//! ask for the components they load to be compiled into it first
//! (`warm_polyglot_cache`): each component is compiled cold once per run,
//! by whichever test needs it first, and a test asks for at most two
//! that no earlier test compiled. A test that needs a cold compile (a
//! SIGTERM in the middle of one) keeps a cache of its own.
//!
//! The folder is made by us with mode 0700 under `target/`, so it passes
//! the agent's trust rules for a cache (owned by the agent's user, not
//! writable by group or others), and is removed when the test process
//! exits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{
    Agent, ConfigFile, Etcd, install_polyglot_plugin, polyglot_plugin_file, wait_for,
    workspace_root,
};

/// How long compiling one or two of these components cold may take (at
/// nice 10, beside other tests and a `cargo build`).
pub const COMPILE_PATIENCE: Duration = Duration::from_secs(240);

/// The compile cache folder the polyglot tests share in this test process.
pub fn polyglot_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let parent = workspace_root().join("target/test-plugin-cache");
        std::fs::create_dir_all(&parent).expect("create target/test-plugin-cache");
        // tempfile creates the folder with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&parent)
            .expect("create the shared plugin cache")
            .keep();
        extern "C" fn remove_cache() {
            if let Some(dir) = CACHE.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain function to run at process exit.
        unsafe { libc::atexit(remove_cache) };
        dir
    })
}

/// `agent.plugins` for the polyglot tests: the default limits (what an
/// operator would run these with), quick rounds, and the compile cache
/// `cache` (`polyglot_cache()`, or a folder of the test's own).
pub fn polyglot_plugins_section(cache: &Path, settings: &str) -> String {
    format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    cacheDir: {}\n    settings:\n{settings}",
        cache.display()
    )
}

/// Has `polyglot_cache()` hold the compiled code of each of the Python or
/// JavaScript plugins `names` (as built by `scripts/build-polyglot`): the
/// ones no earlier call compiled are compiled now, together, by an agent of
/// their own. One warm-up runs at a time; a call waits for the one running.
/// At most two new components a call, so no test compiles more.
pub async fn warm_polyglot_cache(names: &[&str]) {
    static WARMED: tokio::sync::Mutex<BTreeSet<String>> =
        tokio::sync::Mutex::const_new(BTreeSet::new());
    let mut warmed = WARMED.lock().await;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !warmed.contains(*n))
        .collect();
    if missing.is_empty() {
        return;
    }
    assert!(
        missing.len() <= 2,
        "warm at most two large components in one test: {missing:?}"
    );
    let cache = polyglot_cache();
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = polyglot_plugins_section(cache, "      {}\n");
    let mut agent = Agent::prepare(&config);
    let mut entries = Vec::new();
    for name in &missing {
        install_polyglot_plugin(&agent.plugins_dir(), name, name);
        let bytes = std::fs::read(polyglot_plugin_file(name)).unwrap();
        entries.push(hex::encode(sha2::Sha256::digest(&bytes)));
    }
    let started = Instant::now();
    agent.spawn(&[]);
    wait_for(
        COMPILE_PATIENCE,
        &format!("{missing:?} compiled into {}", cache.display()),
        || {
            let entries = &entries;
            async move { entries.iter().all(|e| cached(cache, e)).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "compiled {missing:?} cold into the shared cache in {:?}",
        started.elapsed()
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
    warmed.extend(missing.iter().map(ToString::to_string));
}

/// Whether `cache` holds an entry for the component whose SHA-256 is
/// `digest` (entries are named by it; temp files start with a dot).
fn cached(cache: &Path, digest: &str) -> bool {
    std::fs::read_dir(cache).is_ok_and(|dir| {
        dir.flatten().any(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(digest))
        })
    })
}
